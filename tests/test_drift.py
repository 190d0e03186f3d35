"""Schema drift: new fields and event types are logged once per shape, by name, and counted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from conftest import Samples

from mem0_receiver import EVENT_TYPES, Receiver
from mem0_receiver.drift import MAX_LISTED, MAX_NAME, SchemaDrift
from mem0_receiver.testing import DOCUMENTED_BODIES, WebhookTester, make_body
from mem0_receiver.verify import new_secret

PRIVATE = "Alex is allergic to penicillin"
NEW_FIELDS = "fields this version does not model"


@pytest.fixture
def hooks() -> Iterator[WebhookTester]:
    receiver = Receiver(secrets=[new_secret()], metrics=True, environ={})
    receiver.on("*")(lambda event: None)
    with WebhookTester(receiver) as tester:
        yield tester


def drift_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if NEW_FIELDS in r.getMessage()]


def drift_count(hooks: WebhookTester, event_type: str, kind: str) -> float | None:
    samples = Samples(hooks._client.get("/metrics").text)
    return samples("mem0_receiver_schema_drift_total", event_type=event_type, kind=kind)


def test_new_fields_are_logged_once_per_set_by_name_only_and_counted_every_time(
    hooks: WebhookTester, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for index in range(3):
        hooks.send("memory_add", memory_id=f"m{index}", memory=PRIVATE, summary=PRIVATE)
    nested_data = {"memory": PRIVATE, "metadata": {"source": PRIVATE}}
    hooks.send("memory_update", data=nested_data, summary=PRIVATE)
    hooks.send("memory_add", memory_id="m9", summary=PRIVATE, score=0.9)

    assert drift_lines(caplog) == [
        "Received memory_add with fields this version does not model: 'event_details.summary'. "
        "They are kept in event.payload; a newer mem0-receiver may model them.",
        "Received memory_update with fields this version does not model: "
        "'event_details.data.metadata', 'event_details.summary'. They are kept in "
        "event.payload; a newer mem0-receiver may model them.",
        "Received memory_add with fields this version does not model: 'event_details.score', "
        "'event_details.summary'. They are kept in event.payload; a newer mem0-receiver may "
        "model them.",
    ]
    assert PRIVATE not in caplog.text
    assert drift_count(hooks, "memory_add", "field") == 4
    assert drift_count(hooks, "memory_update", "field") == 1


def test_fields_of_the_flat_shape_are_named_at_the_top_level(
    hooks: WebhookTester, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    hooks.send("memory_add", shape="flat", agent_id="agent_1")
    assert drift_lines(caplog) == [
        "Received memory_add with fields this version does not model: 'agent_id'. They are "
        "kept in event.payload; a newer mem0-receiver may model them."
    ]


def test_an_unknown_event_type_is_logged_once_and_counted_every_time(
    hooks: WebhookTester, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for memory_id in ("m1", "m2", "m3"):
        body = {"event": "memory_archive", "memory_id": memory_id, "note": PRIVATE}
        assert hooks.post(json.dumps(body).encode()).status_code == 202
    assert [r.getMessage() for r in caplog.records] == [
        "Received an unknown event type 'memory_archive': acknowledged and passed to '*' "
        "handlers only."
    ]
    assert drift_count(hooks, "memory_archive", "event_type") == 3
    assert drift_count(hooks, "memory_archive", "field") is None


# make_payload's flat ingest-job sample carries a memory text, which those models lack.
BODIES = {
    **{f"documented-{name}": body for name, body in DOCUMENTED_BODIES.items()},
    **{f"nested-{name}": make_body(name) for name in EVENT_TYPES},
    **{f"flat-{name}": make_body(name, shape="flat") for name in EVENT_TYPES[:4]},
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_documented_and_sample_payloads_do_not_drift(
    hooks: WebhookTester, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    caplog.set_level(logging.WARNING)
    assert hooks.post(body).status_code == 202
    assert caplog.records == []
    assert "mem0_receiver_schema_drift_total{" not in hooks._client.get("/metrics").text


def test_remembered_shapes_are_capped_and_unknown_types_past_the_cap_count_as_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    counted: list[tuple[str, str]] = []
    drift = SchemaDrift(EVENT_TYPES, count=lambda *labels: counted.append(labels), max_shapes=2)
    for event_type in ("first_new", "second_new", "third_new", "first_new", "fourth_new"):
        drift.note(event_type, {"event": event_type})
    drift.note("memory_add", {"event": "ADD", "id": "m1", "score": 1})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "'first_new'" in messages[0] and "'second_new'" in messages[1]
    assert "logging no more" in messages[2]
    assert counted == [
        ("first_new", "event_type"),
        ("second_new", "event_type"),
        ("other", "event_type"),
        ("first_new", "event_type"),
        ("other", "event_type"),
        ("memory_add", "field"),
    ]


def test_long_and_many_field_names_are_clipped_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    payload = {"event": "memory_add", "id": "m1", "a" * 500: 1}
    payload.update({f"extra_{index:02}": index for index in range(MAX_LISTED + 5)})
    SchemaDrift(EVENT_TYPES).note("memory_add", payload)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "a" * MAX_NAME not in message
    assert "'" + "a" * (MAX_NAME - 1) + "…'" in message
    assert message.count("'extra_") == MAX_LISTED - 1
    assert "and 6 more" in message
