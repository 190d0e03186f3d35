"""Register the receiver's webhook URL in a Mem0 project with the official client.

The functions here wrap ``mem0.MemoryClient`` (from the optional ``mem0ai``
package) so that the ``register`` command gets:

* a client built from arguments or the environment (``MEM0_API_KEY``,
  ``MEM0_HOST``), with the API key checked once by the client itself;
* event types checked locally before any request is sent;
* one-line :class:`~mem0_receiver.errors.ConfigurationError` messages for every
  failure, which never contain the API key or the webhook URL's ``token``.

The webhook URL carries a secret ``token`` query parameter. Anything meant for
a terminal or a log must go through :func:`redact_url` (or
:func:`redact_webhook`) first.

Note that ``mem0ai`` sends anonymous usage events to PostHog unless
``MEM0_TELEMETRY=false`` is set *before* ``mem0`` is first imported, and that
importing it creates ``~/.mem0/config.json`` (or ``$MEM0_DIR/config.json``).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol, TypeVar

import httpx

from .errors import ConfigurationError
from .events import EVENT_TYPES
from .server import redact_token

__all__ = [
    "EVENT_TYPES",
    "Mem0Client",
    "close_client",
    "create_webhook",
    "delete_webhook",
    "list_webhooks",
    "make_client",
    "redact_url",
    "redact_webhook",
    "validate_event_types",
]


REDACTED: Final = "\u2026"

_INSTALL_HINT: Final = (
    "The register command needs the mem0ai package: pip install 'mem0-receiver[mem0]'."
)
_MISSING_KEY: Final = "Set MEM0_API_KEY or pass --api-key."
# Ids go into URL paths unescaped by the client, so keep them to one safe segment.
_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]+")
_USERINFO_PASSWORD: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#@]*@")
_MAX_DETAIL: Final = 200
_MIN_SECRET_LENGTH: Final = 6
_DEFAULT_HOST: Final = "https://api.mem0.ai"
_TIMEOUT_SECONDS: Final = 30.0

_T = TypeVar("_T")


class Mem0Client(Protocol):
    """The part of ``mem0.MemoryClient`` that registration relies on."""

    @property
    def project_id(self) -> str | None:
        """Project the API key belongs to, as reported by Mem0's ping."""
        ...

    def create_webhook(
        self, url: str, name: str, project_id: str, event_types: list[str]
    ) -> Any: ...

    def get_webhooks(self, project_id: str) -> Any: ...

    def delete_webhook(self, webhook_id: Any) -> Any: ...


def redact_url(url: str) -> str:
    """Return ``url`` with the value of every ``token`` query parameter shown as ``…``.

    A password in the URL's user info is hidden the same way. Everything else
    is kept byte for byte, so the result still says which endpoint is meant.
    """
    return _USERINFO_PASSWORD.sub(rf"\1:{REDACTED}@", redact_token(url))


def redact_webhook(webhook: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of a webhook record from Mem0 that is safe to print."""
    safe = dict(webhook)
    url = safe.get("url")
    if isinstance(url, str):
        safe["url"] = redact_url(url)
    return safe


def validate_event_types(event_types: Iterable[str]) -> list[str]:
    """Return ``event_types`` without duplicates, or raise if one is not a Mem0 event type."""
    wanted = list(dict.fromkeys(event_types))
    if not wanted:
        raise ConfigurationError(f"Choose at least one event type from: {', '.join(EVENT_TYPES)}.")
    unknown = [event_type for event_type in wanted if event_type not in EVENT_TYPES]
    if unknown:
        names = ", ".join(repr(event_type) for event_type in unknown)
        noun = "type" if len(unknown) == 1 else "types"
        hints = [
            event_type.replace(":", "_")
            for event_type in unknown
            if event_type.replace(":", "_") in EVENT_TYPES
        ]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ConfigurationError(
            f"Unknown Mem0 event {noun} {names}{hint}; choose from: {', '.join(EVENT_TYPES)}."
        )
    return wanted


def make_client(
    *,
    api_key: str | None = None,
    host: str | None = None,
    org_id: str | None = None,
    project_id: str | None = None,
) -> Mem0Client:
    """Build a ``mem0.MemoryClient`` whose API key Mem0 has just accepted.

    ``api_key`` falls back to ``MEM0_API_KEY`` and ``host`` to ``MEM0_HOST``,
    then to the client's own default (``https://api.mem0.ai``). The client
    pings ``GET /v1/ping/`` while it is constructed; that is where a wrong key
    or an unreachable host shows up. ``org_id`` and ``project_id`` are handed
    to clients that still accept them and otherwise override what the ping
    reported. Requests time out after 30 seconds (the client's own default is
    300). Call :func:`close_client` when done.
    """
    key = (api_key or os.environ.get("MEM0_API_KEY") or "").strip()
    if not key:
        raise ConfigurationError(_MISSING_KEY)
    base_url = (host or os.environ.get("MEM0_HOST") or "").strip() or None
    if base_url is not None and not _is_http_url(base_url):
        raise ConfigurationError(
            f"The Mem0 host {redact_url(base_url)!r} is not an absolute http(s) URL; "
            "set MEM0_HOST to one like https://api.mem0.ai."
        )
    for label, value in (("organization", org_id), ("project", project_id)):
        if value is not None:
            _check_id(label, value)

    try:
        from mem0 import MemoryClient
    except ImportError:
        raise ConfigurationError(_INSTALL_HINT) from None

    kwargs: dict[str, Any] = {"api_key": key}
    if base_url is not None:
        kwargs["host"] = base_url
    accepted = inspect.signature(MemoryClient).parameters
    ids = {"org_id": org_id, "project_id": project_id}
    late_ids: dict[str, str] = {}
    for name, value in ids.items():
        if value is None:
            continue
        if name in accepted:
            kwargs[name] = value
        else:
            late_ids[name] = value

    http: httpx.Client | None = None
    if "client" in accepted:
        # Owning the connection pool lets a failed key check close it rather than leak it.
        http = httpx.Client(timeout=_TIMEOUT_SECONDS)
        kwargs["client"] = http
    try:
        client = MemoryClient(**kwargs)
    except BaseException as exc:
        if http is not None:
            http.close()
        if isinstance(exc, _client_errors()):
            where = redact_url(base_url or _DEFAULT_HOST)
            message = _failure_message(exc, where=where, doing=None, secrets=[key])
            raise ConfigurationError(message) from None
        raise
    for name, value in late_ids.items():
        setattr(client, name, value)
    return client  # type: ignore[no-any-return]


def close_client(client: Mem0Client) -> None:
    """Close the HTTP connection pool of a client built by :func:`make_client`."""
    http = getattr(client, "client", None)
    close = getattr(http, "close", None)
    if callable(close):
        close()


def create_webhook(
    client: Mem0Client,
    *,
    url: str,
    name: str,
    event_types: list[str],
    project_id: str | None = None,
) -> dict[str, Any]:
    """Register ``url`` as a webhook called ``name`` and return Mem0's record of it.

    ``project_id`` defaults to the project of the client's API key. The record
    contains the full URL, token included: print it through :func:`redact_webhook`.
    """
    wanted = validate_event_types(event_types)
    _check_webhook_url(url)
    if not name.strip():
        raise ConfigurationError("Give the webhook a name.")
    project = _project_of(client, project_id)
    result = _call(
        client,
        f"create the webhook for {redact_url(url)} in project {project}",
        lambda: client.create_webhook(url=url, name=name, project_id=project, event_types=wanted),
    )
    return _as_record(result, what="the created webhook")


def list_webhooks(client: Mem0Client, *, project_id: str | None = None) -> list[dict[str, Any]]:
    """Return the webhooks of ``project_id`` (default: the API key's project)."""
    project = _project_of(client, project_id)
    result = _call(
        client,
        f"list the webhooks of project {project}",
        lambda: client.get_webhooks(project_id=project),
    )
    if isinstance(result, Mapping) and isinstance(result.get("results"), list):
        result = result["results"]
    if not isinstance(result, list) or not all(isinstance(item, Mapping) for item in result):
        raise ConfigurationError(
            f"Mem0 answered the webhook list of project {project} with something that is "
            "not a list of webhooks; upgrade mem0ai and mem0-receiver."
        )
    return [dict(item) for item in result]


def delete_webhook(client: Mem0Client, *, webhook_id: str) -> dict[str, Any]:
    """Delete the webhook ``webhook_id`` and return Mem0's answer."""
    _check_id("webhook", webhook_id)
    result = _call(
        client,
        f"delete webhook {webhook_id}",
        lambda: client.delete_webhook(webhook_id=webhook_id),
    )
    return _as_record(result, what="the deleted webhook")


def _check_id(label: str, value: str) -> None:
    if not _ID_PATTERN.fullmatch(value):
        raise ConfigurationError(
            f"The {label} id {value!r} is not a Mem0 id; use only letters, digits, '-' and '_'."
        )


def _is_http_url(url: str) -> bool:
    try:
        parts = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parts.scheme in ("http", "https") and bool(parts.host)


def _check_webhook_url(url: str) -> None:
    if not _is_http_url(url):
        raise ConfigurationError(
            f"The webhook URL {redact_url(url)!r} is not an absolute http(s) URL; "
            "pass the receiver's public URL."
        )


def _project_of(client: Mem0Client, project_id: str | None) -> str:
    project = project_id or client.project_id
    if not project:
        raise ConfigurationError(
            "Mem0 did not say which project this API key belongs to; pass --project-id."
        )
    _check_id("project", project)
    return project


def _as_record(result: Any, *, what: str) -> dict[str, Any]:
    if not isinstance(result, Mapping):
        raise ConfigurationError(
            f"Mem0 answered with something that is not {what}; upgrade mem0ai and mem0-receiver."
        )
    return dict(result)


def _call(client: Mem0Client, doing: str, call: Callable[[], _T]) -> _T:
    try:
        return call()
    except _client_errors() as exc:
        api_key = getattr(client, "api_key", None)
        secrets = [api_key] if isinstance(api_key, str) and api_key else []
        host = getattr(client, "host", None)
        where = redact_url(host if isinstance(host, str) else _DEFAULT_HOST)
        raise ConfigurationError(
            _failure_message(exc, where=where, doing=doing, secrets=secrets)
        ) from None


def _client_errors() -> tuple[type[Exception], ...]:
    """What the client raises for a failed request (mem0's own errors if it has them)."""
    errors: tuple[type[Exception], ...] = (httpx.HTTPError, ValueError)
    try:
        from mem0.exceptions import MemoryError as Mem0Error
    except ImportError:
        return errors
    return (*errors, Mem0Error)


def _failure_message(
    exc: BaseException, *, where: str, doing: str | None, secrets: list[str]
) -> str:
    """One sentence saying what failed and what to do, with no secret in it."""
    status, detail = _status_and_detail(exc)
    detail = _scrub(detail, secrets)
    if status in (401, 403):
        refused = f"refused to {doing} with this API key" if doing else "refused the API key"
        return (
            f"Mem0 at {where} {refused} (HTTP {status}: {detail}); "
            "set MEM0_API_KEY or pass --api-key with a valid key."
        )
    action = doing or "check the API key"
    if status is not None:
        advice = "try again later" if status >= 500 or status == 429 else "check the arguments"
        return f"Mem0 at {where} could not {action} (HTTP {status}: {detail}); {advice}."
    if isinstance(exc, httpx.RequestError) or type(exc).__name__ == "NetworkError":
        return (
            f"Could not reach Mem0 at {where} to {action} ({detail}); "
            "check MEM0_HOST and the network."
        )
    return f"Mem0 at {where} could not {action} ({detail})."


def _status_and_detail(exc: BaseException) -> tuple[int | None, str]:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code, _response_detail(exc.response)
    # mem0.exceptions.MemoryError and its subclasses.
    debug_info = getattr(exc, "debug_info", None)
    message = getattr(exc, "message", None)
    if isinstance(debug_info, Mapping) and isinstance(message, str):
        status = debug_info.get("status_code")
        return (status if isinstance(status, int) else None), message
    # MemoryClient's constructor turns a failed ping into ValueError("Error: ...")
    # raised while handling the httpx.HTTPStatusError.
    context = exc.__context__
    if isinstance(exc, ValueError) and isinstance(context, httpx.HTTPStatusError):
        detail = str(exc).removeprefix("Error: ")
        return context.response.status_code, detail
    return None, str(exc) or type(exc).__name__


def _response_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text or response.reason_phrase
    if isinstance(body, Mapping) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return response.text


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if len(secret) >= _MIN_SECRET_LENGTH:  # a one-letter "key" would blank out every word
            text = text.replace(secret, REDACTED)
    text = redact_url(" ".join(text.split()))
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 1] + REDACTED
    return text.rstrip(".") or "no details"
