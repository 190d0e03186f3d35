"""A fake of the Mem0 platform for the REST calls mem0ai's ``MemoryClient`` makes.

It serves exactly what ``MemoryClient`` (mem0ai 2.2.1) requests for webhook
management, under a real uvicorn server on 127.0.0.1, so tests drive the real
client over real HTTP:

=======  ==========================================  ==========================
Method   Path                                        Client method
=======  ==========================================  ==========================
GET      ``/v1/ping/``                               ``MemoryClient.__init__``
GET      ``/api/v1/webhooks/projects/{project_id}/``  ``get_webhooks``
POST     ``/api/v1/webhooks/projects/{project_id}/``  ``create_webhook``
PUT      ``/api/v1/webhooks/{webhook_id}/``           ``update_webhook``
DELETE   ``/api/v1/webhooks/{webhook_id}/``           ``delete_webhook``
=======  ==========================================  ==========================

Every request needs ``Authorization: Token <key>`` with a key in
``FakeMem0.valid_keys`` (401 otherwise). Every request, including ones to
paths the fake does not know (answered 404), is appended to
``FakeMem0.requests``.

Use it through the ``fake_mem0`` fixture (``pytest_plugins = ["fake_mem0"]``)
or the ``serve_fake_mem0()`` context manager.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["FakeMem0", "RecordedRequest", "fake_mem0", "mem0_sdk_offline", "serve_fake_mem0"]

EVENT_TYPES = frozenset(
    {
        "memory_add",
        "memory_update",
        "memory_delete",
        "memory_categorize",
        "ingest_job_completed",
        "ingest_job_partially_completed",
        "ingest_job_failed",
        "ingest_job_cancelled",
    }
)
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

Handler = Callable[[Request, Any], JSONResponse]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, as the client sent it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    json: Any  # parsed body, None when empty, the raw text when not JSON
    status: int


@dataclass
class FakeMem0:
    """State of the fake platform; ``url`` is set once the server listens."""

    api_key: str = "m0-fake-key-0123456789abcdef"
    org_id: str = "org_fake"
    project_id: str = "proj_fake"
    other_projects: frozenset[str] = frozenset({"proj_other"})
    user_email: str = "dev@example.com"
    url: str = ""
    valid_keys: set[str] = field(default_factory=set)
    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def __post_init__(self) -> None:
        self.valid_keys.add(self.api_key)

    @property
    def projects(self) -> frozenset[str]:
        return self.other_projects | {self.project_id}

    def revoke_key(self, key: str | None = None) -> None:
        """Make Mem0 answer 401 to ``key`` (default: ``api_key``) from now on."""
        with self._lock:
            self.valid_keys.discard(key or self.api_key)

    def calls(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every request so far, in order."""
        with self._lock:
            return [(r.method, r.path, r.status) for r in self.requests]

    # -- the ASGI app -------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/ping/", self._endpoint(self._ping), methods=["GET"]),
                Route(
                    "/api/v1/webhooks/projects/{project_id}/",
                    self._endpoint(self._project_webhooks),
                    methods=["GET", "POST"],
                ),
                Route(
                    "/api/v1/webhooks/{webhook_id}/",
                    self._endpoint(self._webhook),
                    methods=["PUT", "DELETE"],
                ),
                Route(
                    "/{path:path}",
                    self._endpoint(self._unknown, public=True),
                    methods=_ALL_METHODS,
                ),
            ]
        )

    def _endpoint(self, handler: Handler, *, public: bool = False) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> JSONResponse:
            raw = await request.body()
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
            with self._lock:
                if not public and not self._authorized(request):
                    response = _error(401, "Invalid API key.")
                else:
                    response = handler(request, body)
                self.requests.append(
                    RecordedRequest(
                        method=request.method,
                        path=request.url.path,
                        query=request.url.query,
                        headers={k.lower(): v for k, v in request.headers.items()},
                        json=body,
                        status=response.status_code,
                    )
                )
            return response

        return endpoint

    def _authorized(self, request: Request) -> bool:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        return scheme == "Token" and key in self.valid_keys

    def _ping(self, request: Request, body: Any) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "org_id": self.org_id,
                "project_id": self.project_id,
                "user_email": self.user_email,
            }
        )

    def _project_webhooks(self, request: Request, body: Any) -> JSONResponse:
        project = request.path_params["project_id"]
        if project not in self.projects:
            return _error(404, "Project not found.")
        if request.method == "GET":
            return JSONResponse([w for w in self.webhooks.values() if w["project"] == project])
        problem = _invalid_webhook(body, partial=False)
        if problem:
            return _error(400, problem)
        now = _now()
        webhook = {
            "webhook_id": f"wh_{next(self._ids)}",
            "name": body.get("name") or "",
            "url": body["url"],
            "event_types": list(body.get("event_types") or []),
            "is_active": True,
            "project": project,
            "created_at": now,
            "updated_at": now,
        }
        self.webhooks[webhook["webhook_id"]] = webhook
        return JSONResponse(webhook, status_code=201)

    def _webhook(self, request: Request, body: Any) -> JSONResponse:
        webhook = self.webhooks.get(request.path_params["webhook_id"])
        if webhook is None:
            return _error(404, "Webhook not found.")
        if request.method == "DELETE":
            del self.webhooks[webhook["webhook_id"]]
            return JSONResponse({"message": "Webhook deleted successfully"})
        problem = _invalid_webhook(body, partial=True)
        if problem:
            return _error(400, problem)
        webhook.update({k: body[k] for k in ("name", "url", "event_types") if k in body})
        webhook["updated_at"] = _now()
        return JSONResponse({"message": "Webhook updated successfully"})

    def _unknown(self, request: Request, body: Any) -> JSONResponse:
        return _error(404, f"The fake Mem0 does not serve {request.method} {request.url.path}.")


def _invalid_webhook(body: Any, *, partial: bool) -> str | None:
    if not isinstance(body, dict):
        return "The body must be a JSON object."
    if "url" in body or not partial:
        url = body.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return "Enter a valid URL."
    if "event_types" in body:
        event_types = body["event_types"]
        if not isinstance(event_types, list) or not all(
            isinstance(e, str) and e in EVENT_TYPES for e in event_types
        ):
            return f"Invalid event types: {event_types!r}."
    return None


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


@contextmanager
def serve_fake_mem0(**state: Any) -> Iterator[FakeMem0]:
    """Run a :class:`FakeMem0` (built from ``state``) under uvicorn on a free local port."""
    fake = FakeMem0(**state)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        fake.app(),
        lifespan="off",
        # No websocket support: importing it would load the websockets package,
        # whose deprecation warnings would fail the suite from the server thread.
        ws="none",
        http="h11",
        loop="asyncio",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="fake-mem0", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("The fake Mem0 server did not start.")
            time.sleep(0.01)
        fake.url = f"http://127.0.0.1:{port}"
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def mem0_sdk_offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Import mem0ai with its telemetry off and its config directory in a temp dir.

    mem0ai reads ``MEM0_TELEMETRY`` and ``MEM0_DIR`` once, when ``mem0`` is
    first imported: with telemetry on, every client call is reported to
    PostHog (us.i.posthog.com), and the import writes ``~/.mem0/config.json``.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEM0_TELEMETRY", "false")
        mp.setenv("MEM0_DIR", str(tmp_path_factory.mktemp("mem0-dir")))
        pytest.importorskip("mem0", reason="the mem0ai package is not installed")
        telemetry = importlib.import_module("mem0.memory.telemetry")
        if telemetry.MEM0_TELEMETRY or telemetry.client_telemetry.posthog is not None:
            pytest.fail(
                "mem0 was imported with telemetry on before these tests could turn it off; "
                "run the tests with MEM0_TELEMETRY=false in the environment."
            )
        yield


@pytest.fixture
def fake_mem0(mem0_sdk_offline: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMem0]:
    """A running fake Mem0 platform; point ``MemoryClient(host=fake_mem0.url)`` at it."""
    for name in ("NO_PROXY", "no_proxy"):
        existing = os.environ.get(name)
        monkeypatch.setenv(name, f"{existing},127.0.0.1" if existing else "127.0.0.1")
    with serve_fake_mem0() as fake:
        yield fake
