"""Baseline: Starlette + itsdangerous token + pydantic + ``actor.send()`` in the async endpoint.

This is what a hand-written receiver usually looks like: dramatiq's RedisBroker is
synchronous, so every ``send`` blocks the event loop for one Redis round trip.
Messages land in the "default" queue of namespace "dramatiq".
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.apps._common import Mem0Event, TokenVerifier, require_env, signed_url

__all__ = ["QUEUE_NAME", "app", "handle_memory_event", "signed_url"]

QUEUE_NAME = "default"

broker = RedisBroker(url=require_env("BENCH_REDIS_URL"))
dramatiq.set_broker(broker)
verifier = TokenVerifier()


@dramatiq.actor(queue_name=QUEUE_NAME)
def handle_memory_event(event: dict[str, Any]) -> None:
    """No-op: the benchmark only measures the receiving side."""


async def webhook(request: Request) -> Response:
    if not verifier.is_valid(request.query_params.get("token")):
        return JSONResponse({"detail": "invalid token"}, status_code=403)
    try:
        event = Mem0Event.model_validate_json(await request.body())
    except ValidationError:
        return JSONResponse({"detail": "invalid payload"}, status_code=422)
    handle_memory_event.send(event.model_dump(mode="json"))
    return JSONResponse({"status": "accepted"}, status_code=202)


app = Starlette(routes=[Route("/", webhook, methods=["POST"])])
