"""The deliveries page: recent deliveries, failed events and queues, for an operator.

Off by default: nothing serves it until you run ``mem0-receiver dashboard
app:receiver`` (with ``MEM0_RECEIVER_DASHBOARD_PASSWORD`` set) or mount
``Dashboard(receiver, password=...)`` in an app of your own. Every request
needs the dashboard's own credentials (HTTP Basic). Error messages and memory
text stay hidden until the operator asks for them (``?show=text``): a
handler's exception may quote the memory. Replay and purge are POSTs that must
carry the page's CSRF token, come from the page's own origin, and be confirmed
on a second page; each then redirects back to the page with a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from urllib.parse import parse_qsl, urlsplit

import dramatiq
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from . import dlq
from .brokers import failure_store
from .config import ENV_DASHBOARD_PASSWORD
from .errors import ConfigurationError
from .failures import Failure
from .pages import STYLE_HASH, confirm_page, index_page, message_page
from .receiver import Receiver
from .snapshot import Snapshot, take_snapshot

__all__ = [
    "DEFAULT_FAILURE_LIMIT",
    "DEFAULT_LIMIT",
    "DEFAULT_USERNAME",
    "ENV_PASSWORD",
    "MAX_BATCH",
    "Dashboard",
]

logger = logging.getLogger("mem0_receiver.dashboard")

#: The user name the dashboard asks for unless told otherwise.
DEFAULT_USERNAME = "admin"
#: Deliveries listed, newest first.
DEFAULT_LIMIT = 50
#: Failed events listed, oldest first.
DEFAULT_FAILURE_LIMIT = 100
#: The most failed events that one replay or purge acts on.
MAX_BATCH = 1000
#: Where ``mem0-receiver dashboard`` reads the password (there is no default).
ENV_PASSWORD = ENV_DASHBOARD_PASSWORD

_MAX_FORM_BYTES = 256 * 1024
_BROKER_ERRORS = (redis.RedisError, dramatiq.errors.BrokerError, OSError)
_REALM = b'Basic realm="mem0-receiver dashboard", charset="UTF-8"'
# No script may run, styles only the page's own, no framing, forms only to us.
_HEADERS = [
    (
        b"content-security-policy",
        f"default-src 'none'; style-src '{STYLE_HASH}'; img-src data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'".encode(),
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class Dashboard:
    """The deliveries page as an ASGI app, behind its own user name and password.

    Serve it with ``mem0-receiver dashboard app:receiver`` next to Redis-backed
    workers, or mount it where the in-memory broker's worker runs (development)::

        app = Starlette(
            routes=[
                Mount("/webhooks/mem0", app=receiver),
                Mount("/dashboard", app=Dashboard(receiver, password=os.environ["PW"])),
            ],
            lifespan=receiver.lifespan,
        )

    The CSRF token is made per process: a page served by one process cannot act
    on another, so run the dashboard in a single process.
    """

    def __init__(
        self,
        receiver: Receiver,
        *,
        username: str = DEFAULT_USERNAME,
        password: str,
        limit: int = DEFAULT_LIMIT,
        failure_limit: int = DEFAULT_FAILURE_LIMIT,
    ) -> None:
        if not isinstance(password, str) or not password:
            raise ConfigurationError(
                f"The dashboard needs a password: pass password=..., or set {ENV_PASSWORD} "
                "for `mem0-receiver dashboard`."
            )
        if not isinstance(username, str) or not username or ":" in username:
            raise ConfigurationError(
                "The dashboard's username must be a non-empty string without a colon "
                "(HTTP Basic cannot carry one)."
            )
        if limit < 1 or failure_limit < 1:
            raise ConfigurationError("limit and failure_limit must be at least 1.")
        self.receiver = receiver
        self.limit = limit
        self.failure_limit = failure_limit
        self.csrf_token = secrets.token_urlsafe(32)
        self._username = hashlib.sha256(username.encode()).digest()
        self._password = hashlib.sha256(password.encode()).digest()
        self._app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_HEADERS]}
            await send(message)

        if scope["type"] == "http" and not self._authorized(scope):
            response = HTMLResponse(
                message_page("Sign in", "This page needs the dashboard's user name and password."),
                status_code=401,
            )
            response.raw_headers.append((b"www-authenticate", _REALM))
            await response(scope, receive, send_secured)
            return
        if self._app is None:
            self._app = Starlette(
                routes=[
                    Route("/", self.index, methods=["GET"]),
                    Route("/replay", self.replay, methods=["POST"]),
                    Route("/purge", self.purge, methods=["POST"]),
                ]
            )
        await self._app(scope, receive, send_secured)

    def _authorized(self, scope: Scope) -> bool:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except binascii.Error:
            return False
        # Digests of equal length, so that neither comparison leaks a length.
        user_ok = hmac.compare_digest(hashlib.sha256(user).digest(), self._username)
        password_ok = hmac.compare_digest(hashlib.sha256(password).digest(), self._password)
        return bool(colon) and user_ok and password_ok

    def snapshot(self, *, now: float) -> Snapshot:
        """What the page shows, read from the broker (blocking)."""
        return take_snapshot(
            self.receiver.broker,
            broker_name=self.receiver.broker_name,
            now=now,
            limit=self.limit,
            failure_limit=self.failure_limit,
        )

    async def index(self, request: Request) -> Response:
        root = request.scope.get("root_path", "")
        now = time.time()
        try:
            snapshot = await run_in_threadpool(self.snapshot, now=now)
        except ConfigurationError as exc:
            return _misconfigured(exc, root)
        except _BROKER_ERRORS as exc:
            return _unavailable(exc, root)
        page = index_page(
            snapshot,
            now=now,
            root=root,
            csrf=self.csrf_token,
            show_text=request.query_params.get("show") == "text",
            flash=_flash(request.query_params),
        )
        return HTMLResponse(page)

    async def replay(self, request: Request) -> Response:
        return await self._act(request, "replay")

    async def purge(self, request: Request) -> Response:
        return await self._act(request, "purge")

    def _choose(self, ids: list[str], everything: bool) -> tuple[list[Failure], int]:
        failures = failure_store(self.receiver.broker).list()
        if everything:
            chosen = failures
        elif ids:
            chosen = dlq.select(failures, ids=ids)
        else:
            chosen = []
        return chosen[:MAX_BATCH], len(failures)

    def _apply(self, action: str, chosen: list[Failure]) -> int:
        broker = self.receiver.broker
        store = failure_store(broker)
        if action == "replay":
            return dlq.replay(broker, store, chosen)
        return dlq.purge(store, chosen)

    async def _act(self, request: Request, action: str) -> Response:
        root = request.scope.get("root_path", "")
        if not _same_origin(request):
            return _refuse(
                "This request came from another site (or a proxy changed the Host header); "
                "nothing was done.",
                root,
            )
        form = await _read_form(request)
        if form is None:
            return HTMLResponse(
                message_page("Bad request", "Send the page's own form.", root=root), 400
            )
        token = form.get("csrf", [""])[0]
        if not hmac.compare_digest(token.encode(), self.csrf_token.encode()):
            return _refuse(
                "This form is out of date or did not come from this page (the dashboard may "
                "have restarted); nothing was done. Reload the page and try again.",
                root,
            )
        try:
            chosen, total = await run_in_threadpool(
                self._choose, form.get("id", []), form.get("all") == ["1"]
            )
            if form.get("confirm") != ["yes"]:
                if not chosen:
                    text = "Those events are no longer in the failure store."
                    return HTMLResponse(message_page(f"Nothing to {action}", text, root=root))
                page = confirm_page(
                    action, chosen, root=root, csrf=self.csrf_token, remaining=total - len(chosen)
                )
                return HTMLResponse(page)
            count = await run_in_threadpool(self._apply, action, chosen)
        except ConfigurationError as exc:
            return _misconfigured(exc, root)
        except _BROKER_ERRORS as exc:
            return _unavailable(exc, root)
        logger.info(
            "Dashboard: %s %d failed event(s): %s.",
            "replayed" if action == "replay" else "purged",
            count,
            ",".join(f.id for f in chosen) or "none",
        )
        return RedirectResponse(f"{root}/?done={action}&count={count}", status_code=303)


def _same_origin(request: Request) -> bool:
    """False when a browser says the form was posted from another origin."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True  # Not a browser; the CSRF token must still match.
    return urlsplit(source).netloc == request.headers.get("host", "")


async def _read_form(request: Request) -> dict[str, list[str]] | None:
    """The url-encoded form, or None if it is anything else or too large.

    Parsed here rather than with ``request.form()``, which needs python-multipart.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            return None
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=MAX_BATCH + 8)
    except ValueError:  # UnicodeDecodeError included
        return None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form


def _flash(query: QueryParams) -> str | None:
    """The message after an action, from ``?done=replay&count=3`` (no free text)."""
    action, count = query.get("done"), query.get("count", "")
    if action not in ("replay", "purge") or not (count.isascii() and count.isdigit()):
        return None
    n = int(count)
    events = "1 failed event" if n == 1 else f"{n} failed events"
    if n == 0:
        return f"Nothing to {action}: those events had already left the failure store."
    if action == "replay":
        return f"Replayed {events}: queued again, with a fresh set of retries."
    return f"Purged {events}."


def _refuse(text: str, root: str) -> Response:
    return HTMLResponse(message_page("Refused", text, root=root), status_code=403)


def _unavailable(exc: BaseException, root: str) -> Response:
    text = f"The broker does not answer ({type(exc).__name__}); reload once Redis is back."
    return HTMLResponse(message_page("Broker unavailable", text, root=root), status_code=503)


def _misconfigured(exc: ConfigurationError, root: str) -> Response:
    logger.error("%s", exc)
    return HTMLResponse(message_page("Misconfigured", str(exc), root=root), status_code=500)
