"""Typed Mem0 events, parsed from the raw body of a webhook.

Mem0 documents two nested shapes (https://docs.mem0.ai/platform/features/webhooks)::

    {"event_details": {"id": "...", "data": {"memory": "Name is Alex"}, "event": "ADD"}}
    {"event_details": {"event": "CATEGORIZE", "memory_id": "...", "categories": ["travel"]}}

and one of its guides shows a flat one::

    {"event": "memory_add", "memory_id": "mem_456", "user_id": "user_789",
     "memory": "User prefers dark mode", "timestamp": "2024-01-15T10:30:00Z"}

All three parse into the same classes. Fields Mem0 adds later are never
rejected: the original body stays in ``event.payload`` and the whole ``data``
object in ``event.data``.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import PayloadError

__all__ = [
    "EVENT_TYPES",
    "Delivery",
    "IngestJobCancelled",
    "IngestJobCompleted",
    "IngestJobEvent",
    "IngestJobFailed",
    "IngestJobPartiallyCompleted",
    "MemoryAdded",
    "MemoryCategorized",
    "MemoryChanged",
    "MemoryDeleted",
    "MemoryEvent",
    "MemoryUpdated",
    "UnknownEvent",
    "event_from_json",
    "event_json",
    "parse_event",
    "read_event",
    "unknown_fields",
]


class Delivery(BaseModel):
    """How and when one webhook request reached us."""

    model_config = ConfigDict(frozen=True)

    #: The sender's ``webhook-id`` header when it sends one, else assigned at receipt.
    delivery_id: str
    #: When the receiver accepted the request (UTC).
    received_at: datetime
    #: Stable across duplicate deliveries and redeliveries of the same event:
    #: derived from the sender's id, or from the raw body when it sends none.
    idempotency_key: str = ""


class MemoryEvent(BaseModel):
    """Base class of every event; ``@receiver.on("*")`` handlers receive this type.

    Example::

        @receiver.on("*")
        def audit(event: MemoryEvent) -> None:
            log.info("%s %s", event.event_type, event.memory_id)
    """

    model_config = ConfigDict(frozen=True)

    event_type: str
    memory_id: str | None = None
    #: The JSON object Mem0 sent, unchanged, including fields this class does not model.
    payload: dict[str, Any]
    delivery: Delivery


class MemoryChanged(MemoryEvent):
    """A memory was added, updated or deleted."""

    #: The memory text, when Mem0 sent it.
    memory: str | None = None
    #: The whole ``data`` object, unknown keys kept (``{}`` for the flat shape).
    data: dict[str, Any] = {}
    user_id: str | None = None


class MemoryAdded(MemoryChanged):
    """``memory_add``: a memory was added."""

    event_type: Literal["memory_add"] = "memory_add"


class MemoryUpdated(MemoryChanged):
    """``memory_update``: an existing memory was updated."""

    event_type: Literal["memory_update"] = "memory_update"


class MemoryDeleted(MemoryChanged):
    """``memory_delete``: a memory was deleted."""

    event_type: Literal["memory_delete"] = "memory_delete"


class MemoryCategorized(MemoryEvent):
    """``memory_categorize``: a memory was given categories."""

    event_type: Literal["memory_categorize"] = "memory_categorize"
    categories: list[str]


class IngestJobEvent(MemoryEvent):
    """An ingest job ended. Mem0 does not document these payloads: read ``payload``."""

    #: From ``job_id`` (or ``id``) when the payload carries one.
    job_id: str | None = None
    #: From ``status`` when the payload carries one.
    status: str | None = None


class IngestJobCompleted(IngestJobEvent):
    """``ingest_job_completed``."""

    event_type: Literal["ingest_job_completed"] = "ingest_job_completed"


class IngestJobPartiallyCompleted(IngestJobEvent):
    """``ingest_job_partially_completed``."""

    event_type: Literal["ingest_job_partially_completed"] = "ingest_job_partially_completed"


class IngestJobFailed(IngestJobEvent):
    """``ingest_job_failed``."""

    event_type: Literal["ingest_job_failed"] = "ingest_job_failed"


class IngestJobCancelled(IngestJobEvent):
    """``ingest_job_cancelled``."""

    event_type: Literal["ingest_job_cancelled"] = "ingest_job_cancelled"


class UnknownEvent(MemoryEvent):
    """An event type this version does not know. Only ``"*"`` handlers receive it."""


EVENT_CLASSES: dict[str, type[MemoryEvent]] = {
    "memory_add": MemoryAdded,
    "memory_update": MemoryUpdated,
    "memory_delete": MemoryDeleted,
    "memory_categorize": MemoryCategorized,
    "ingest_job_completed": IngestJobCompleted,
    "ingest_job_partially_completed": IngestJobPartiallyCompleted,
    "ingest_job_failed": IngestJobFailed,
    "ingest_job_cancelled": IngestJobCancelled,
}

#: Every event type a Mem0 webhook can subscribe to, in Mem0's spelling.
EVENT_TYPES: tuple[str, ...] = tuple(EVENT_CLASSES)

# The nested shape names the event in capitals ("ADD"); the flat shape and
# the subscription API use the type names themselves ("memory_add").
_NESTED_NAMES = {"ADD": "memory_add", "UPDATE": "memory_update", "DELETE": "memory_delete"}
_NESTED_NAMES["CATEGORIZE"] = "memory_categorize"


def _event_type(name: str) -> str:
    name = name.strip()
    return _NESTED_NAMES.get(name.upper()) or name.lower()


def _opaque_id(details: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = details.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def _fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The model fields found in a decoded Mem0 body, or a PayloadError naming what is missing."""
    details = obj.get("event_details", obj)
    if not isinstance(details, dict):
        raise PayloadError("event_details must be a JSON object.")
    name = details.get("event", details.get("event_type"))
    if not isinstance(name, str) or not name.strip():
        raise PayloadError(
            "The payload names no event: expected event_details.event "
            "(ADD, UPDATE, DELETE, CATEGORIZE) or a top-level event such as memory_add."
        )
    event_type = _event_type(name)
    fields: dict[str, Any] = {"event_type": event_type}

    if event_type.startswith("ingest_job_"):
        fields["job_id"] = _opaque_id(details, "job_id", "id")
        fields["memory_id"] = _opaque_id(details, "memory_id")
        status = details.get("status")
        fields["status"] = status if isinstance(status, str) else None
        return fields

    fields["memory_id"] = _opaque_id(details, "id", "memory_id")
    if event_type == "memory_categorize":
        if fields["memory_id"] is None:
            raise PayloadError("A CATEGORIZE event needs event_details.memory_id.")
        categories = details.get("categories")
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise PayloadError("A CATEGORIZE event needs categories, a list of strings.")
        fields["categories"] = categories
    elif event_type in EVENT_CLASSES:
        if fields["memory_id"] is None:
            raise PayloadError(f"A {event_type} event needs the memory's id (id or memory_id).")
        data = details.get("data", {})
        if not isinstance(data, dict):
            raise PayloadError("event_details.data must be a JSON object.")
        memory = data.get("memory", details.get("memory"))
        fields["memory"] = memory if isinstance(memory, str) else None
        fields["data"] = data
        user_id = details.get("user_id", data.get("user_id"))
        fields["user_id"] = user_id if isinstance(user_id, str) else None
    return fields


# The field names Mem0's documentation and guide show, and those the parser
# reads, per event type: in ``event_details`` (or at the top level of the flat
# shape) and, for memory changes, in ``data``. Ingest-job payloads are
# undocumented: the names are those the parser reads.
_COMMON_FIELDS = frozenset({"event", "event_type", "timestamp", "user_id"})
_MEMORY_FIELDS = _COMMON_FIELDS | {"id", "memory_id", "memory", "data"}
_JOB_FIELDS = _COMMON_FIELDS | {"id", "job_id", "memory_id", "status"}
KNOWN_FIELDS: dict[str, frozenset[str]] = {
    "memory_add": _MEMORY_FIELDS,
    "memory_update": _MEMORY_FIELDS,
    "memory_delete": _MEMORY_FIELDS,
    "memory_categorize": _COMMON_FIELDS | {"id", "memory_id", "categories"},
    **{name: _JOB_FIELDS for name in EVENT_TYPES if name.startswith("ingest_job_")},
}
KNOWN_DATA_FIELDS = frozenset({"memory", "user_id"})
_NOTHING: frozenset[str] = frozenset()


def unknown_fields(event_type: str, payload: dict[str, Any]) -> frozenset[str]:
    """Names in ``payload`` that the model of ``event_type`` does not know, as dotted paths.

    ``{"event_details": {..., "score": 0.9}}`` gives ``{"event_details.score"}``;
    an event type with no model gives nothing (it is drift of its own kind).
    """
    known = KNOWN_FIELDS.get(event_type)
    if known is None:
        return _NOTHING
    found = payload.get("event_details")
    nested = isinstance(found, dict)
    details: dict[str, Any] = found if isinstance(found, dict) else payload
    data = details.get("data") if known is _MEMORY_FIELDS else None
    data_keys = data.keys() if isinstance(data, dict) else _NOTHING
    # The usual case, cheaply: subset tests build no sets.
    if (
        (not nested or len(payload) == 1)
        and details.keys() <= known
        and data_keys <= KNOWN_DATA_FIELDS
    ):
        return _NOTHING
    prefix = "event_details." if nested else ""
    names = {name for name in payload if name != "event_details"} if nested else set()
    names.update(prefix + name for name in details.keys() - known)
    names.update(f"{prefix}data.{name}" for name in data_keys - KNOWN_DATA_FIELDS)
    return frozenset(names)


#: Deeper JSON is refused: no Mem0 payload nests like that, and pydantic cannot
#: serialise much deeper values onto the queue.
MAX_DEPTH = 32


def _not_json(value: str) -> float:
    # NaN and Infinity are accepted by Python's json module but are not JSON
    # (RFC 8259 section 6), and would come off the queue as null.
    raise ValueError(f"{value} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


# One decoder for all requests: json.loads() with hooks builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


# JSON can escape half of a UTF-16 surrogate pair on its own ("\\ud800"); json
# decodes it into a str that cannot be encoded again, in keys as in values.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(obj: object) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _too_deep(obj: object) -> bool:
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            if depth > MAX_DEPTH:
                return True
            stack.extend((child, depth + 1) for child in value)
    return False


def read_event(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The decoded body and the event's model fields found in it, checked.

    This is :func:`parse_event` without building the model: the receiver's
    acknowledgement path uses it with :func:`event_json`.

    Raises:
        PayloadError: with ``status="malformed"`` when the body is not a JSON
            object, and ``status="invalid"`` when it is not a Mem0 event.
    """
    try:
        # Decode first: json.loads(bytes) would also take UTF-16 and UTF-32.
        obj = _DECODER.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadError("The body is not valid UTF-8 JSON.", status="malformed") from exc
    if not isinstance(obj, dict):
        raise PayloadError("The body must be a JSON object.", status="malformed")
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(obj):
        raise PayloadError(
            "The body contains an escaped lone surrogate (\\ud800-\\udfff), which is not "
            "valid Unicode.",
            status="malformed",
        )
    # Counting brackets is cheap and bounds the depth from above.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _too_deep(obj):
        raise PayloadError(f"The body nests deeper than {MAX_DEPTH} levels.")
    return obj, _fields(obj)


def parse_event(body: bytes, *, delivery: Delivery) -> MemoryEvent:
    """Parse a webhook body into its event class.

    Raises:
        PayloadError: with ``status="malformed"`` when the body is not a JSON
            object, and ``status="invalid"`` when it is not a Mem0 event.
    """
    obj, fields = read_event(body)
    cls = EVENT_CLASSES.get(fields["event_type"], UnknownEvent)
    return cls.model_validate({**fields, "payload": obj, "delivery": delivery})


def event_json(
    event_type: str,
    memory_id: str | None,
    body: bytes,
    *,
    delivery_id: str,
    received_at: datetime,
    idempotency_key: str,
) -> str:
    """The event as it crosses the queue: the body as it came, and how it was delivered.

    ``event_type`` and ``memory_id`` (from :func:`read_event`) ride along for
    readers that do not parse, such as the failure store; :func:`event_from_json`
    parses the payload again with the same rules. Written out by hand because it
    runs on the acknowledgement path, where building the model and dumping it
    cost more than the rest of the request; the body goes in as it came, since
    read_event accepted it as JSON.
    """
    delivery = (
        f'{{"delivery_id":{_quote(delivery_id)},'
        f'"received_at":"{received_at.isoformat().replace("+00:00", "Z")}",'
        f'"idempotency_key":{_quote(idempotency_key)}}}'
    )
    memory = _quote(memory_id) if memory_id is not None else "null"
    return (
        f'{{"event_type":{_quote(event_type)},"memory_id":{memory},'
        f'"payload":{body.decode()},"delivery":{delivery}}}'
    )


def event_from_json(data: dict[str, Any]) -> MemoryEvent:
    """Rebuild an event from :func:`event_json` (or ``event.model_dump(mode="json")``).

    The fields come from the payload, parsed as :func:`parse_event` parses a body.
    """
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise PayloadError("A queued event carries no payload object.")
    fields = _fields(payload)
    cls = EVENT_CLASSES.get(fields["event_type"], UnknownEvent)
    try:
        return cls.model_validate({**fields, "payload": payload, "delivery": data.get("delivery")})
    except ValidationError as exc:
        # Only reachable when a message was written by another version of this library.
        raise PayloadError(
            f"A queued event no longer matches {cls.__name__}: {exc.error_count()} field(s) differ."
        ) from exc


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
