"""The testing kit: build Mem0 payloads, sign them, and run your handlers in a test.

No server, no Redis: :class:`WebhookTester` posts signed requests through
your receiver's real ASGI app, on the in-memory broker, and :meth:`drain
<WebhookTester.drain>` then runs the queued handlers in the test itself, so a
handler's exception fails the test where it happened::

    from mem0_receiver.testing import WebhookTester
    from myapp.hooks import receiver, saved

    def test_remember_saves_the_memory():
        with WebhookTester(receiver) as hooks:
            hooks.send("memory_add", memory="Name is Alex")
            hooks.drain()
        assert saved == ["Name is Alex"]

Installing the package also gives pytest the ``mem0_payload`` and
``webhook_tester`` fixtures (see :mod:`mem0_receiver.pytest_plugin`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from .brokers import is_durable
from .errors import ConfigurationError
from .events import EVENT_TYPES, event_from_json
from .receiver import Receiver
from .verify import TOKEN_PARAM, HmacVerifier, StandardVerifier, TokenVerifier, new_secret
from .worker import EVENT

# Starlette's TestClient returns httpx's (or httpx2's) Response, whichever is
# installed; both have .status_code, .json() and .text.
Response = Any

__all__ = [
    "DOCUMENTED_BODIES",
    "Signer",
    "WebhookTester",
    "make_body",
    "make_payload",
    "new_secret",
]

SAMPLE_MEMORY_ID = "a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5"

#: The payloads of Mem0's webhook documentation, byte for byte.
DOCUMENTED_BODIES: dict[str, bytes] = {
    "memory_add": b"""{
    "event_details": {
        "id": "a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
            "data": {
            "memory": "Name is Alex"
            },
        "event": "ADD"
    }
}""",
    "memory_categorize": b"""{
    "event_details": {
        "event": "CATEGORIZE",
        "memory_id": "a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
        "categories": ["hobbies", "travel"]
    }
}""",
    "flat": b'{"event": "memory_add", "memory_id": "mem_456", "user_id": "user_789", '
    b'"memory": "User prefers dark mode", "timestamp": "2024-01-15T10:30:00Z"}',
}

_NESTED_EVENT = {
    "memory_add": "ADD",
    "memory_update": "UPDATE",
    "memory_delete": "DELETE",
    "memory_categorize": "CATEGORIZE",
}


def make_payload(
    event_type: str,
    *,
    shape: str = "nested",
    memory_id: str = SAMPLE_MEMORY_ID,
    memory: str | None = "Name is Alex",
    categories: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A payload in the shape Mem0 documents for ``event_type``.

    ``shape="nested"`` gives ``{"event_details": {...}}`` as in Mem0's webhook
    docs, ``shape="flat"`` the flat shape of Mem0's guide. ``extra`` fields are
    added where Mem0 would put them (inside ``event_details`` when nested).
    Ingest-job payloads are undocumented: these carry ``id`` and ``status``.

    >>> make_payload("memory_add", memory="Name is Alex")
    {'event_details': {'id': 'a1b2c3d4-…', 'data': {'memory': 'Name is Alex'}, 'event': 'ADD'}}
    """
    if shape not in ("nested", "flat"):
        raise ValueError('shape must be "nested" or "flat".')
    if event_type not in EVENT_TYPES and not extra.pop("allow_unknown", False):
        raise ValueError(
            f"Unknown event type {event_type!r}; choose from {', '.join(EVENT_TYPES)}."
        )
    if shape == "flat":
        flat: dict[str, Any] = {"event": event_type, "memory_id": memory_id}
        if event_type == "memory_categorize":
            flat["categories"] = ["hobbies", "travel"] if categories is None else categories
        elif memory is not None:
            flat["memory"] = memory
        flat.update({"user_id": "user_789", "timestamp": "2024-01-15T10:30:00Z"})
        flat.update(extra)
        return flat
    details: dict[str, Any]
    if event_type == "memory_categorize":
        cats = ["hobbies", "travel"] if categories is None else categories
        details = {"event": "CATEGORIZE", "memory_id": memory_id, "categories": cats}
    elif event_type in _NESTED_EVENT:
        data = {} if memory is None else {"memory": memory}
        details = {"id": memory_id, "data": data, "event": _NESTED_EVENT[event_type]}
    else:
        details = {"event": event_type, "id": f"job_{memory_id}", "status": event_type[11:]}
    details.update(extra)
    return {"event_details": details}


def make_body(event_type: str, **fields: Any) -> bytes:
    """:func:`make_payload` serialised as Mem0 would send it."""
    return json.dumps(make_payload(event_type, **fields)).encode()


class Signer:
    """Signs requests for each scheme with the first of ``secrets``."""

    def __init__(self, secrets: list[str] | tuple[str, ...]) -> None:
        self.secrets = list(secrets)

    def token(self) -> str:
        return TokenVerifier(self.secrets).sign()

    def hmac_headers(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        ts = int(time.time()) if timestamp is None else timestamp
        return {"X-Mem0-Signature": HmacVerifier(self.secrets).sign(body, timestamp=ts)}

    def standard_headers(
        self, body: bytes, *, msg_id: str | None = None, timestamp: int | None = None
    ) -> dict[str, str]:
        ts = int(time.time()) if timestamp is None else timestamp
        return StandardVerifier(self.secrets).sign(
            body, msg_id=msg_id or f"msg_{uuid.uuid4().hex}", timestamp=ts
        )

    def sign(self, scheme: str, body: bytes) -> tuple[dict[str, str], dict[str, str]]:
        """``(query params, headers)`` that make ``body`` pass ``scheme``."""
        if scheme == "token":
            return {TOKEN_PARAM: self.token()}, {}
        if scheme == "hmac":
            return {}, self.hmac_headers(body)
        if scheme == "standard":
            return {}, self.standard_headers(body)
        raise ValueError(f"Unknown scheme {scheme!r}.")


class WebhookTester:
    """Your receiver's real ASGI app on the in-memory broker, with a ``drain()``.

    Parameters:
        receiver: Your receiver. It is copied with an in-memory broker (and a
            test secret if it has none); the original is left untouched.
        app: The host app your receiver is mounted in (FastAPI, Starlette), to
            test through it. The host app holds your receiver itself, so that
            receiver must then be on the in-memory broker and have a secret:
            leave ``MEM0_RECEIVER_BROKER_URL`` unset and set
            ``MEM0_RECEIVER_SECRETS`` in your tests.
        path: Where ``app`` mounts the receiver, e.g. ``"/webhooks/mem0/"``.

    Note that ``drain()`` calls your handlers directly: the worker-side
    guarantees (no second run of completed work, per-memory order, the failure
    store) are dramatiq middleware, tested with real workers in this project.
    """

    def __init__(self, receiver: Receiver, *, app: ASGIApp | None = None, path: str = "/") -> None:
        self.path = path
        if app is None:
            overrides: dict[str, Any] = {"broker": StubBroker()}
            if not receiver.settings.secrets and not receiver.settings.insecure:
                overrides["secrets"] = [new_secret()]
            self.receiver = receiver.copy(**overrides)
            app = self.receiver
        else:
            if is_durable(receiver.broker):
                raise ConfigurationError(
                    "WebhookTester(app=...) needs the mounted receiver on the in-memory broker; "
                    "leave MEM0_RECEIVER_BROKER_URL unset in tests."
                )
            if not receiver.settings.secrets and not receiver.settings.insecure:
                raise ConfigurationError(
                    "The mounted receiver has no secret; set MEM0_RECEIVER_SECRETS in tests "
                    "(any value from `mem0-receiver secret`)."
                )
            self.receiver = receiver
        self.broker = self.receiver.broker
        self.signer = Signer(self.receiver.settings.secrets)
        self._client = TestClient(app, raise_server_exceptions=True)

    def __enter__(self) -> WebhookTester:
        self._client.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.__exit__(exc_type, exc, tb)

    def post(
        self,
        body: bytes,
        *,
        scheme: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """POST ``body`` signed with ``scheme`` (default: the first the receiver accepts)."""
        query: dict[str, str] = {}
        signed: dict[str, str] = {"Content-Type": "application/json"}
        if not self.receiver.settings.insecure:
            scheme = scheme or self.receiver.settings.verify[0]
            query, extra = self.signer.sign(scheme, body)
            signed.update(extra)
        signed.update(headers or {})
        query.update(params or {})
        return self._client.post(self.path, content=body, headers=signed, params=query)

    def send(self, event_type: str, *, scheme: str | None = None, **fields: Any) -> Response:
        """POST a documented payload for ``event_type``; fields as in :func:`make_payload`.

        Raises AssertionError if the receiver does not answer 202.
        """
        response = self.post(make_body(event_type, **fields), scheme=scheme)
        if response.status_code != 202:
            raise AssertionError(f"The receiver answered {response.status_code}: {response.text}")
        return response

    def pending(self) -> int:
        """How many handler runs are queued."""
        return sum(queue.qsize() for queue in self.broker.queues.values())

    def drain(self) -> int:
        """Run every queued handler now, in this thread; return how many ran.

        A handler's exception propagates out of ``drain()``, unchanged.
        """
        assert isinstance(self.broker, StubBroker)
        ran = 0
        while True:
            queue = next((q for q in self.broker.queues.values() if not q.empty()), None)
            if queue is None:
                return ran
            message = dramatiq.Message.decode(queue.get_nowait())
            queue.task_done()
            handler = next(h for h in self.receiver.registry if h.actor_name == message.actor_name)
            event = event_from_json(message.options[EVENT])
            if handler.is_async:
                _run_coroutine(handler.fn(event))
            else:
                handler.fn(event)
            ran += 1


def _run_coroutine(coroutine: Any) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)
        return
    # Called from async code: run on a loop of its own in another thread.
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
