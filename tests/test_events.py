"""Parsing webhook bodies into events, and events crossing the queue as JSON."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from mem0_receiver.errors import PayloadError
from mem0_receiver.events import (
    Delivery,
    IngestJobCancelled,
    IngestJobCompleted,
    IngestJobEvent,
    IngestJobFailed,
    IngestJobPartiallyCompleted,
    MemoryAdded,
    MemoryCategorized,
    MemoryChanged,
    MemoryDeleted,
    MemoryEvent,
    MemoryUpdated,
    UnknownEvent,
    event_from_json,
    event_json,
    parse_event,
    read_event,
    unknown_fields,
)
from mem0_receiver.testing import DOCUMENTED_BODIES, make_payload

NOW = 1_700_000_000
RECEIVED_AT = datetime.fromtimestamp(NOW, tz=timezone.utc)
DELIVERY = Delivery(delivery_id="dlv_1", received_at=RECEIVED_AT, idempotency_key="body:abc")
DOCUMENTED_ID = "a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5"
MEMORY = "Allergic to peanuts, keeps it private"


def body_of(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def parse(body: bytes) -> MemoryEvent:
    return parse_event(body, delivery=DELIVERY)


def cross_the_queue(body: bytes, delivery: Delivery = DELIVERY) -> MemoryEvent:
    """What a worker rebuilds from the message the receiver enqueues for ``body``."""
    _, fields = read_event(body)
    message = event_json(
        fields["event_type"],
        fields["memory_id"],
        body,
        delivery_id=delivery.delivery_id,
        received_at=delivery.received_at,
        idempotency_key=delivery.idempotency_key,
    )
    return event_from_json(json.loads(message))


# Mem0's documented bodies, byte for byte


@pytest.mark.parametrize(
    ("name", "cls", "fields"),
    [
        (
            "memory_add",
            MemoryAdded,
            {
                "memory_id": DOCUMENTED_ID,
                "memory": "Name is Alex",
                "data": {"memory": "Name is Alex"},
                "user_id": None,
            },
        ),
        (
            "memory_categorize",
            MemoryCategorized,
            {"memory_id": DOCUMENTED_ID, "categories": ["hobbies", "travel"]},
        ),
        (
            "flat",
            MemoryAdded,
            {
                "memory_id": "mem_456",
                "user_id": "user_789",
                "memory": "User prefers dark mode",
                "data": {},
            },
        ),
    ],
    ids=["memory_add", "memory_categorize", "flat memory_add"],
)
def test_a_documented_body_parses_into_its_event(
    name: str, cls: type[MemoryEvent], fields: dict[str, Any]
) -> None:
    body = DOCUMENTED_BODIES[name]

    event = parse(body)

    assert type(event) is cls
    assert {key: getattr(event, key) for key in fields} == fields
    assert event.payload == json.loads(body)


def test_a_memory_id_is_an_opaque_string_not_a_uuid() -> None:
    event = parse(DOCUMENTED_BODIES["memory_add"])

    assert event.memory_id == DOCUMENTED_ID
    with pytest.raises(ValueError):
        uuid.UUID(DOCUMENTED_ID)


# Every event type

EVENT_CLASSES: list[tuple[str, type[MemoryEvent]]] = [
    ("memory_add", MemoryAdded),
    ("memory_update", MemoryUpdated),
    ("memory_delete", MemoryDeleted),
    ("memory_categorize", MemoryCategorized),
    ("ingest_job_completed", IngestJobCompleted),
    ("ingest_job_partially_completed", IngestJobPartiallyCompleted),
    ("ingest_job_failed", IngestJobFailed),
    ("ingest_job_cancelled", IngestJobCancelled),
]
SHAPES = ["nested", "flat"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("event_type", "cls"), EVENT_CLASSES, ids=[name for name, _ in EVENT_CLASSES]
)
def test_every_event_type_parses_into_its_class(
    event_type: str, cls: type[MemoryEvent], shape: str
) -> None:
    payload = make_payload(event_type, shape=shape, memory=MEMORY)

    event = parse(body_of(payload))

    assert type(event) is cls
    assert event.event_type == event_type
    assert event.payload == payload
    assert event.delivery == DELIVERY


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "event_type",
    ["memory_add", "memory_update", "memory_delete"],
)
def test_a_memory_change_carries_its_id_text_and_user(event_type: str, shape: str) -> None:
    event = parse(body_of(make_payload(event_type, shape=shape, memory=MEMORY)))

    assert isinstance(event, MemoryChanged)
    assert (event.memory_id, event.memory) == (DOCUMENTED_ID, MEMORY)
    assert event.user_id == (None if shape == "nested" else "user_789")


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("ingest_job_completed", "completed"),
        ("ingest_job_partially_completed", "partially_completed"),
        ("ingest_job_failed", "failed"),
        ("ingest_job_cancelled", "cancelled"),
    ],
    ids=["completed", "partially completed", "failed", "cancelled"],
)
def test_an_ingest_job_event_carries_its_job_id_and_status(event_type: str, status: str) -> None:
    event = parse(body_of(make_payload(event_type)))

    assert isinstance(event, IngestJobEvent)
    assert (event.job_id, event.status) == (f"job_{DOCUMENTED_ID}", status)


@pytest.mark.parametrize("shape", SHAPES)
def test_an_unknown_event_type_gives_an_unknown_event_that_keeps_its_type(shape: str) -> None:
    payload = make_payload("memory_archive", shape=shape, allow_unknown=True)

    event = parse(body_of(payload))

    assert type(event) is UnknownEvent
    assert event.event_type == "memory_archive"
    assert event.payload == payload


# Fields Mem0 adds later


def test_unknown_keys_in_event_details_and_data_are_kept() -> None:
    payload = make_payload("memory_add", memory=MEMORY, source="api", score=0.93)
    payload["event_details"]["data"].update(
        {"confidence": 0.9, "metadata": {"lang": "en"}, "tags": ["a"]}
    )
    payload["request_id"] = "req_1"

    event = parse(body_of(payload))

    assert isinstance(event, MemoryAdded)
    assert event.payload == payload
    assert event.payload["event_details"]["source"] == "api"
    assert event.data == {
        "memory": MEMORY,
        "confidence": 0.9,
        "metadata": {"lang": "en"},
        "tags": ["a"],
    }


@pytest.mark.parametrize("event_type", ["memory_update", "memory_categorize", "ingest_job_failed"])
def test_unknown_keys_never_make_a_payload_rejected(event_type: str) -> None:
    payload = make_payload(event_type, shape="flat", project_id="proj_123", version=2, extra=None)

    event = parse(body_of(payload))

    assert event.event_type == event_type
    assert event.payload == payload


UNKNOWN_FIELDS = {
    "documented": (DOCUMENTED_BODIES["memory_add"], set()),
    "documented flat": (DOCUMENTED_BODIES["flat"], set()),
    "in event_details": (
        body_of(make_payload("memory_add", source="api", score=0.9)),
        {"event_details.source", "event_details.score"},
    ),
    "in data": (
        body_of({"event_details": {"event": "UPDATE", "id": "m1", "data": {"tags": [MEMORY]}}}),
        {"event_details.data.tags"},
    ),
    "beside event_details": (
        body_of({**make_payload("memory_delete"), "request_id": "r1"}),
        {"request_id"},
    ),
    "flat": (body_of(make_payload("memory_update", shape="flat", version=2)), {"version"}),
    "categorize": (body_of(make_payload("memory_categorize", data={})), {"event_details.data"}),
    "ingest job": (
        body_of(make_payload("ingest_job_failed", error=MEMORY)),
        {"event_details.error"},
    ),
    "unknown type": (body_of({"event": "memory_archive", "memory_id": "m1", "x": 1}), set()),
}


@pytest.mark.parametrize(("body", "names"), UNKNOWN_FIELDS.values(), ids=UNKNOWN_FIELDS.keys())
def test_unknown_fields_names_what_the_model_does_not_know_as_dotted_paths(
    body: bytes, names: set[str]
) -> None:
    event = parse(body)
    assert unknown_fields(event.event_type, event.payload) == names


# Crossing the queue

_ROUND_TRIP_PAYLOADS: dict[str, Any] = {
    **{
        f"{name} {shape}": make_payload(name, shape=shape, memory=MEMORY, note="kept")
        for name, _ in EVENT_CLASSES
        for shape in SHAPES
    },
    "unknown event": make_payload("memory_archive", allow_unknown=True),
    "documented memory_add": json.loads(DOCUMENTED_BODIES["memory_add"]),
    "documented categorize": json.loads(DOCUMENTED_BODIES["memory_categorize"]),
    "documented flat": json.loads(DOCUMENTED_BODIES["flat"]),
}


@pytest.mark.parametrize(
    "payload", list(_ROUND_TRIP_PAYLOADS.values()), ids=list(_ROUND_TRIP_PAYLOADS)
)
def test_an_event_crosses_the_queue_as_json_unchanged(payload: dict[str, Any]) -> None:
    event = parse(body_of(payload))

    rebuilt = cross_the_queue(body_of(payload))

    assert rebuilt == event
    assert type(rebuilt) is type(event)


@pytest.mark.parametrize(
    "payload", list(_ROUND_TRIP_PAYLOADS.values()), ids=list(_ROUND_TRIP_PAYLOADS)
)
def test_an_event_dumped_by_pydantic_crosses_the_queue_too(payload: dict[str, Any]) -> None:
    # The shape messages had before event_json, and what a hand-built test message holds.
    event = parse(body_of(payload))

    rebuilt = event_from_json(json.loads(event.model_dump_json()))

    assert rebuilt == event


def test_an_event_crosses_the_queue_with_the_body_as_sent() -> None:
    body = b'{ "event" : "memory_add",\n "memory_id": "m_1", "memory": "caf\xc3\xa9 \\u00e9",'
    body += b' "n": 12345678901234567890123, "x": [1.5e-7, -0.0, {"": null}] }'
    event = parse(body)

    rebuilt = cross_the_queue(body)

    assert rebuilt == event
    assert rebuilt.payload == json.loads(body)
    assert isinstance(rebuilt, MemoryAdded) and rebuilt.memory == "café é"


def _nested_inside_an_event(depth: int) -> bytes:
    nesting = b"[" * depth + b"]" * depth
    return b'{"event": "memory_add", "memory_id": "m_1", "extra": ' + nesting + b"}"


@pytest.mark.parametrize(
    "body",
    [
        _nested_inside_an_event(200),
        _nested_inside_an_event(300),
        _nested_inside_an_event(900),
        b'{"event": "memory_add", "memory_id": "m_1", "score": 1e999}',
    ],
    ids=["nested 200 deep", "nested 300 deep", "nested 900 deep", "number beyond float range"],
)
def test_a_body_is_either_refused_at_parse_or_crosses_the_queue_unchanged(body: bytes) -> None:
    # The receiver enqueues events.event_json after read_event returns: an
    # event that cannot cross the queue must be refused here.
    try:
        event = parse(body)
    except PayloadError:
        return

    rebuilt = cross_the_queue(body)

    assert rebuilt.payload == event.payload
    assert rebuilt == event


# Errors

MALFORMED_BODIES: dict[str, bytes] = {
    "not UTF-8": b'{"event": "memory_add", "memory": "caf\xe9"}',
    "invalid UTF-8 sequence": b"\xc3\x28",
    "UTF-16": json.dumps(make_payload("memory_add", memory=MEMORY)).encode("utf-16"),
    "empty": b"",
    "not JSON": b"memory_add " + MEMORY.encode(),
    "truncated JSON": body_of(make_payload("memory_add", memory=MEMORY))[:-3],
    "NaN is not JSON": b'{"event": "memory_add", "memory_id": "m_1", "score": NaN}',
    "JSON array": body_of([make_payload("memory_add", memory=MEMORY)]),
    "JSON string": body_of(MEMORY),
    "JSON number": b"42",
    "JSON null": b"null",
    "JSON true": b"true",
    "100000 levels of [": b"[" * 100_000,
    "100000 levels of {": b'{"a":' * 100_000,
    "100000 levels inside an event": _nested_inside_an_event(100_000),
}


@pytest.mark.parametrize("body", list(MALFORMED_BODIES.values()), ids=list(MALFORMED_BODIES))
def test_a_body_that_is_not_a_json_object_is_malformed(body: bytes) -> None:
    with pytest.raises(PayloadError) as caught:
        parse(body)

    assert caught.value.status == "malformed"


def _nested(**details: Any) -> bytes:
    return body_of({"event_details": details})


INVALID_BODIES: dict[str, tuple[bytes, str]] = {
    "no event": (body_of({"memory": MEMORY}), "event"),
    "event is not a string": (body_of({"event": 1, "memory": MEMORY}), "event"),
    "event is blank": (body_of({"event": " ", "memory": MEMORY}), "event"),
    "event_details is a list": (body_of({"event_details": [MEMORY]}), "event_details"),
    "event_details is a string": (body_of({"event_details": MEMORY}), "event_details"),
    "event_details is null": (body_of({"event_details": None}), "event_details"),
    "memory_add without id": (_nested(event="ADD", data={"memory": MEMORY}), "id"),
    "memory_add with an empty id": (_nested(event="ADD", id="", data={"memory": MEMORY}), "id"),
    "flat memory_add without memory_id": (
        body_of({"event": "memory_add", "memory": MEMORY}),
        "memory_id",
    ),
    "memory_delete with a list id": (
        _nested(event="DELETE", id=[MEMORY], data={"memory": MEMORY}),
        "id",
    ),
    "categorize without memory_id": (
        _nested(event="CATEGORIZE", categories=[MEMORY]),
        "memory_id",
    ),
    "categorize without categories": (
        _nested(event="CATEGORIZE", memory_id="m_1", memory=MEMORY),
        "categories",
    ),
    "categories is a string": (
        _nested(event="CATEGORIZE", memory_id="m_1", categories=MEMORY),
        "categories",
    ),
    "categories holds a number": (
        _nested(event="CATEGORIZE", memory_id="m_1", categories=[MEMORY, 3]),
        "list of strings",
    ),
    "data is a string": (_nested(event="ADD", id="m_1", data=MEMORY), "data"),
    "data is a list": (_nested(event="UPDATE", id="m_1", data=[MEMORY]), "data"),
}


@pytest.mark.parametrize(("body", "named"), list(INVALID_BODIES.values()), ids=list(INVALID_BODIES))
def test_a_json_object_that_is_not_a_mem0_event_is_invalid_and_says_what_is_missing(
    body: bytes, named: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        parse(body)

    assert caught.value.status == "invalid"
    assert named in str(caught.value)


_EVERY_REFUSED_BODY = {
    **{name: body for name, body in MALFORMED_BODIES.items() if MEMORY.encode() in body},
    **{name: body for name, (body, _) in INVALID_BODIES.items()},
}


@pytest.mark.parametrize("body", list(_EVERY_REFUSED_BODY.values()), ids=list(_EVERY_REFUSED_BODY))
def test_memory_text_never_appears_in_a_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError) as caught:
        parse(body)

    for text in (str(caught.value), repr(caught.value), str(caught.value.__cause__)):
        assert MEMORY not in text
        assert "Allergic" not in text


# The delivery


def test_the_delivery_is_carried_on_the_event_and_across_the_queue() -> None:
    event = parse(DOCUMENTED_BODIES["memory_add"])

    for carried in (event.delivery, cross_the_queue(DOCUMENTED_BODIES["memory_add"]).delivery):
        assert carried.delivery_id == "dlv_1"
        assert carried.idempotency_key == "body:abc"
        assert carried.received_at == RECEIVED_AT
        assert carried.received_at.utcoffset() == timedelta(0)


def test_a_delivery_is_its_own_per_request_value() -> None:
    other = Delivery(delivery_id="dlv_2", received_at=RECEIVED_AT + timedelta(seconds=1))
    body = DOCUMENTED_BODIES["flat"]

    first, second = parse(body), parse_event(body, delivery=other)

    assert (first.delivery.delivery_id, second.delivery.delivery_id) == ("dlv_1", "dlv_2")
    assert second.delivery.received_at - first.delivery.received_at == timedelta(seconds=1)
    assert first.payload == second.payload
