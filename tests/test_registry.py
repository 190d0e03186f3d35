"""@receiver.on(...): mistakes fail at import with a sentence that names the fix."""

from __future__ import annotations

from typing import Any

import pytest

from mem0_receiver import ConfigurationError, Receiver
from mem0_receiver.events import EVENT_TYPES


def handler(event: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("types", "options", "message"),
    [
        (("memory_added",), {}, "Unknown event type 'memory_added'; choose from memory_add"),
        (("ADD",), {}, "Unknown event type 'ADD'"),
        ((), {}, "on() needs at least one event type"),
        (("memory_add",), {"retries": 3}, "unknown option 'retries'; the options are max_retries"),
        (("memory_add",), {"max_retries": -1}, "max_retries must be a whole number >= 0"),
        (("memory_add",), {"max_retries": "5"}, "max_retries must be a whole number >= 0"),
        (("memory_add",), {"time_limit": 0}, "time_limit must be at least 1 millisecond"),
        (("memory_add",), {"queue_name": "bad queue"}, "is not a valid queue name"),
    ],
    ids=[
        "typo",
        "nested-name",
        "no-types",
        "unknown-option",
        "negative-retries",
        "string-retries",
        "zero-time-limit",
        "bad-queue",
    ],
)
def test_bad_registration_fails_when_the_decorator_is_applied(
    types: tuple[str, ...], options: dict[str, Any], message: str
) -> None:
    receiver = Receiver(environ={})
    with pytest.raises(ConfigurationError) as raised:
        receiver.on(*types, **options)(handler)
    assert message in str(raised.value)


def test_second_handler_with_the_same_name_is_refused() -> None:
    receiver = Receiver(environ={})
    receiver.on("memory_add")(handler)
    with pytest.raises(ConfigurationError, match="already registered; give this one another"):
        receiver.on("memory_delete")(handler)
    receiver.on("memory_delete", name="handler-for-deletes")(handler)
    assert [h.name for h in receiver.handlers] == ["test_registry.handler", "handler-for-deletes"]


@pytest.mark.parametrize(
    "fn",
    [lambda: None, lambda a, b: None, lambda *, event: None],
    ids=["no-argument", "two-arguments", "keyword-only"],
)
def test_handler_that_cannot_take_the_event_is_refused(fn: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"must accept exactly one argument, the event"):
        Receiver(environ={}).on("memory_add")(fn)


def test_bare_decorator_says_how_to_write_it() -> None:
    receiver = Receiver(environ={})
    with pytest.raises(ConfigurationError, match=r'write @receiver.on\("memory_add"\)'):
        receiver.on(handler)  # type: ignore[arg-type]


def test_wildcard_receives_every_type_and_unknown_types_reach_only_wildcards() -> None:
    receiver = Receiver(environ={})
    receiver.on("memory_add", name="adds")(handler)
    receiver.on("memory_add", "memory_delete", name="adds-and-deletes")(handler)
    receiver.on("*", name="all")(handler)

    def names(event_type: str) -> list[str]:
        return [h.name for h in receiver.registry.handlers_for(event_type)]

    assert names("memory_add") == ["adds", "adds-and-deletes", "all"]
    assert names("memory_delete") == ["adds-and-deletes", "all"]
    for event_type in EVENT_TYPES[3:]:
        assert names(event_type) == ["all"], event_type
    assert names("memory_archive") == ["all"]


def test_a_handler_registered_after_events_were_routed_gets_the_next_ones() -> None:
    receiver = Receiver(environ={})
    receiver.on("memory_add", name="first")(handler)
    assert [h.name for h in receiver.registry.handlers_for("memory_add")] == ["first"]

    receiver.on("*", name="later")(handler)

    assert [h.name for h in receiver.registry.handlers_for("memory_add")] == ["first", "later"]
    assert [h.name for h in receiver.registry.handlers_for("memory_archive")] == ["later"]


def test_defaults_suit_webhooks_not_dramatiqs_month_of_retries() -> None:
    receiver = Receiver(environ={})
    receiver.on("memory_add")(handler)
    (registered,) = receiver.handlers
    assert registered.max_retries == 8
    assert registered.max_backoff == 300_000
    assert registered.queue_name == "mem0"
    actor = receiver.broker.get_actor(registered.actor_name)
    assert actor.options["max_retries"] == 8
