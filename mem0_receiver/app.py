"""The HTTP edge: the only module that knows about status codes.

``POST /`` verifies, parses and enqueues, then answers 202; every other outcome
is a JSON error with the right status. ``GET /healthz`` answers while the
process serves, ``GET /readyz`` reports the broker, and ``GET /metrics`` serves
Prometheus metrics when they are on.
The webhook endpoint is a plain ASGI callable rather than a Starlette
``Request`` handler because it must read the body itself, chunk by chunk, to
enforce the size limit before buffering a large body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .drift import SchemaDrift
from .errors import EnqueueError, PayloadError, VerificationError
from .events import EVENT_TYPES, event_json, read_event, utcnow
from .verify import TOKEN_PARAM
from .worker import encode_message

if TYPE_CHECKING:
    from .receiver import Receiver

__all__ = ["build_app"]

logger = logging.getLogger("mem0_receiver.http")

#: Seconds a client is told to wait when the broker is down or slow.
RETRY_AFTER = "5"


def json_response(
    status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    content = json.dumps(body, separators=(",", ":")).encode()
    return Response(content, status_code=status, headers=headers, media_type="application/json")


class Reply:
    """A JSON answer, sent as two raw ASGI messages (cheaper than a Starlette Response)."""

    __slots__ = ("body", "headers", "outcome", "status_code")

    def __init__(
        self,
        status: int,
        outcome: str,
        content: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.status_code = status
        #: What happened, for metrics: the body's "error" or "status".
        self.outcome = outcome
        self.body = content
        self.headers = [_JSON_TYPE, (b"content-length", b"%d" % len(content)), *headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.headers}
        )
        await send({"type": "http.response.body", "body": self.body})


_JSON_TYPE = (b"content-type", b"application/json")


def _error(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> Reply:
    content = json.dumps({"error": error, "detail": detail}, separators=(",", ":")).encode()
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    return Reply(status, error, content, extra)


def _accepted(status: str, delivery_id: str) -> Reply:
    """202 ``{"status": ..., "delivery_id": ...}``, written out: every accepted request gets it."""
    content = b'{"status":"%b","delivery_id":%b}' % (status.encode(), _quote(delivery_id).encode())
    return Reply(202, status, content)


def _query_param(query: bytes, name: bytes) -> str | None:
    """The first value of ``name`` in a raw query string (what parse_qsl would give)."""
    if name + b"=" not in query:
        return None
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if key == name:
            text = value.decode("latin-1")
            return unquote_plus(text) if "%" in text or "+" in text else text
    return None


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        # Be liberal: a sender that omits the header still sends JSON.
        return True
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, ``None`` if the client went away; _TooLarge past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class WebhookEndpoint:
    """``POST /``: verify → parse → enqueue → 202."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.settings = receiver.settings
        self.metrics = receiver.metrics
        count = self.metrics.drifted if self.metrics is not None else None
        self.drift = SchemaDrift(frozenset(EVENT_TYPES), count=count)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        context: dict[str, Any] = {}
        response = await self.handle(scope, receive, context)
        if response is None:  # The client disconnected before sending its body.
            return
        await response(scope, receive, send)
        if self.metrics is not None:
            self.metrics.answered(response.outcome, response.status_code)
            if response.status_code == 202:
                self.metrics.acknowledged(time.perf_counter() - started)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "status=%d delivery=%s event=%s memory_id=%s latency_ms=%.1f",
                response.status_code,
                context.get("delivery_id", "-"),
                context.get("event_type", "-"),
                context.get("memory_id", "-"),
                (time.perf_counter() - started) * 1000,
            )

    async def handle(self, scope: Scope, receive: Receive, context: dict[str, Any]) -> Reply | None:
        if scope["method"] != "POST":
            return _error(405, "method_not_allowed", "Send webhooks with POST.", {"Allow": "POST"})
        headers = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
        }
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            return self._too_large(limit)
        try:
            body = await _read_body(receive, limit)
        except _TooLarge:
            return self._too_large(limit)
        if body is None:
            return None

        scheme = "insecure"
        if not self.settings.insecure:
            verdict = self._verify(scope, body, headers)
            if isinstance(verdict, Reply):
                return verdict
            scheme = verdict
        if not _is_json(headers.get("content-type")):
            return _error(415, "unsupported_media_type", "Send the body as application/json.")

        # The sender's id names the delivery only when it cannot have been
        # changed: an hmac signature covers the body but not this header, so a
        # replay with a new id would otherwise be queued again.
        sender_id = headers.get("webhook-id") if scheme != "hmac" else None
        if sender_id:
            key = "id:" + hashlib.sha256(sender_id.encode()).hexdigest()
        else:
            key = "body:" + hashlib.sha256(body).hexdigest()
        delivery_id = sender_id or os.urandom(16).hex()
        context["delivery_id"] = delivery_id
        try:
            payload, fields = read_event(body)
        except PayloadError as exc:
            if exc.status == "malformed":
                return _error(400, "malformed_body", str(exc))
            return _error(422, "not_a_mem0_event", str(exc))
        event_type: str = fields["event_type"]
        memory_id: str | None = fields["memory_id"]
        context["event_type"] = event_type
        context["memory_id"] = memory_id or "-"

        handlers = self.receiver.registry.handlers_for(event_type)
        self.drift.note(event_type, payload)
        if not handlers:
            return _accepted("ignored", delivery_id)
        # The typed event is built on the worker, from this JSON: building it
        # here too would cost more than the rest of the request (events.event_json).
        event = event_json(
            event_type,
            memory_id,
            body,
            delivery_id=delivery_id,
            received_at=utcnow(),
            idempotency_key=key,
        )
        messages = [encode_message(handler, event, memory_id) for handler in handlers]
        try:
            seen = await self.receiver.enqueuer().enqueue(key, delivery_id, messages)
        except EnqueueError as exc:
            logger.warning("Enqueue failed delivery=%s: %s", delivery_id, exc)
            return _error(
                503,
                "broker_unavailable",
                "The queue is unavailable or slow and did not confirm the event; retry later "
                "(a retry of an event that did get through is recognised as a duplicate).",
                {"Retry-After": RETRY_AFTER},
            )
        if seen is not None:
            context["delivery_id"] = seen
            return _accepted("duplicate", seen)
        return _accepted("queued", delivery_id)

    def _verify(self, scope: Scope, body: bytes, headers: dict[str, str]) -> str | Reply:
        """The name of the first scheme the request passes, or the 401 to send."""
        token = _query_param(scope.get("query_string", b""), TOKEN_PARAM.encode())
        now = time.time()
        reasons = []
        for verifier in self.receiver.verifiers:
            try:
                verifier.verify(body, headers, token=token, now=now)
                return verifier.name
            except VerificationError as exc:
                reasons.append(f"{verifier.name}: {exc}")
        logger.warning("Rejected an unverified request: %s", "; ".join(reasons))
        return _error(
            401,
            "unauthorized",
            "The request carries no valid token or signature (" + "; ".join(reasons) + ")",
        )

    def _too_large(self, limit: int) -> Reply:
        return _error(413, "body_too_large", f"The body is larger than {limit} bytes.")


def build_app(receiver: Receiver, endpoint: WebhookEndpoint) -> Starlette:
    """The Starlette app around ``endpoint``: /healthz, /readyz, /metrics, JSON 404 and 405."""

    async def healthz(request: Request) -> Response:
        # Liveness: the process serves. The broker is /readyz's business.
        return json_response(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        enqueuer = receiver.enqueuer()
        try:
            ok = await asyncio.wait_for(enqueuer.ping(), timeout=receiver.settings.enqueue_timeout)
        except asyncio.TimeoutError:
            ok = False
        if ok:
            return json_response(200, {"status": "ok", "broker": receiver.broker_name})
        return json_response(503, {"status": "unavailable", "broker": receiver.broker_name})

    async def not_found(request: Request, exc: Exception) -> Response:
        detail = "Webhooks are received at the mount point with POST."
        return json_response(404, {"error": "not_found", "detail": detail})

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        detail = "Use GET for /healthz, /readyz and /metrics."
        body = {"error": "method_not_allowed", "detail": detail}
        return json_response(405, body, {"Allow": "GET"})

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: not_found,
        405: method_not_allowed,
    }
    routes = [
        Route("/", endpoint),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    metrics = receiver.metrics
    if metrics is not None:

        async def serve_metrics(request: Request) -> Response:
            text, content_type = metrics.exposition(request.headers.get("accept", ""))
            return Response(text, headers={"Content-Type": content_type})

        routes.append(Route("/metrics", serve_metrics, methods=["GET"]))
    return Starlette(routes=routes, exception_handlers=handlers)
