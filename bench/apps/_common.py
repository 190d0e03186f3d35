"""Pieces shared by the baseline apps: env config, URL token, and the Mem0 event model."""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeSerializer
from pydantic import BaseModel

TOKEN_SALT = "bench"
TOKEN_PAYLOAD = "mem0-webhook"


def require_env(name: str) -> str:
    """Read a required setting; the apps never fall back to a shared Redis."""
    try:
        return os.environ[name]
    except KeyError:
        raise RuntimeError(
            f"{name} is not set; bench/run.py sets it (e.g. BENCH_REDIS_URL=redis://127.0.0.1:PORT/0)"
        ) from None


def serializer() -> URLSafeSerializer:
    return URLSafeSerializer(require_env("BENCH_SECRET"), salt=TOKEN_SALT)


class TokenVerifier:
    """Checks the ``?token=`` value against BENCH_SECRET (itsdangerous, salt "bench")."""

    def __init__(self) -> None:
        self._serializer = serializer()

    def is_valid(self, token: str | None) -> bool:
        if not token:
            return False
        try:
            return bool(self._serializer.loads(token) == TOKEN_PAYLOAD)
        except BadSignature:
            return False


def signed_url(base: str) -> str:
    """``base`` with the ``?token=`` query parameter the baseline apps accept."""
    return f"{base}?{urlencode({'token': serializer().dumps(TOKEN_PAYLOAD)})}"


class MemoryData(BaseModel):
    memory: str


class EventDetails(BaseModel):
    id: str
    data: MemoryData
    event: Literal["ADD", "UPDATE", "DELETE"]


class Mem0Event(BaseModel):
    """The Mem0 webhook payload, e.g. ``{"event_details": {"id": ..., "data": ..., ...}}``."""

    event_details: EventDetails
