"""The testing kit: what users write their handler tests with."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mem0_receiver import MemoryAdded, MemoryCategorized, MemoryEvent, Receiver
from mem0_receiver.events import EVENT_TYPES
from mem0_receiver.testing import WebhookTester, make_body, make_payload
from mem0_receiver.verify import new_secret

pytest_plugins = ["pytester"]


def test_make_payload_builds_the_documented_shapes_with_overrides() -> None:
    assert make_payload("memory_add", memory="Name is Sam", memory_id="m1") == {
        "event_details": {"id": "m1", "data": {"memory": "Name is Sam"}, "event": "ADD"}
    }
    assert make_payload("memory_categorize", categories=["food"]) == {
        "event_details": {
            "event": "CATEGORIZE",
            "memory_id": "a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
            "categories": ["food"],
        }
    }
    assert make_payload("memory_add", shape="flat")["memory"] == "Name is Alex"
    with pytest.raises(ValueError, match="Unknown event type 'memory_added'"):
        make_payload("memory_added")


def test_drain_runs_sync_and_async_handlers_in_the_test() -> None:
    receiver = Receiver(environ={})
    seen: list[tuple[str, MemoryEvent]] = []

    @receiver.on("memory_add")
    def remember(event: MemoryAdded) -> None:
        seen.append(("remember", event))

    @receiver.on("*")
    async def audit(event: MemoryEvent) -> None:
        seen.append(("audit", event))

    with WebhookTester(receiver) as hooks:
        hooks.send("memory_add", memory="Name is Alex")
        hooks.send("memory_categorize", categories=["travel"])
        assert hooks.pending() == 3
        assert hooks.drain() == 3
        assert hooks.pending() == 0
    assert [name for name, _ in seen] == ["remember", "audit", "audit"]
    assert seen[0][1].memory == "Name is Alex"  # type: ignore[attr-defined]
    assert isinstance(seen[2][1], MemoryCategorized)


def test_handler_exceptions_surface_from_drain_unchanged() -> None:
    receiver = Receiver(environ={})

    class Boom(Exception):
        pass

    @receiver.on("memory_delete")
    def forget(event: Any) -> None:
        raise Boom(event.memory_id)

    with WebhookTester(receiver) as hooks:
        hooks.send("memory_delete", memory_id="m7")
        with pytest.raises(Boom, match="m7"):
            hooks.drain()


def test_send_fails_the_test_when_the_receiver_does_not_accept() -> None:
    receiver = Receiver(environ={})
    receiver.on("*")(lambda event: None)
    with WebhookTester(receiver) as hooks:
        with pytest.raises(AssertionError, match="answered 401"):
            hooks.send("memory_add", scheme="hmac")  # the receiver only accepts tokens


def test_tester_leaves_the_users_receiver_untouched() -> None:
    receiver = Receiver(broker="redis://127.0.0.1:1/0", environ={})
    receiver.on("memory_add")(lambda event: None)
    with WebhookTester(receiver) as hooks:
        hooks.post(make_body("memory_add"))
        assert hooks.pending() == 1
    assert receiver.settings.broker_url == "redis://127.0.0.1:1/0"
    assert receiver.settings.secrets == ()


def test_every_event_type_round_trips_through_the_kit() -> None:
    receiver = Receiver(environ={})
    seen: list[MemoryEvent] = []
    receiver.on("*")(seen.append)
    with WebhookTester(receiver) as hooks:
        for event_type in EVENT_TYPES:
            hooks.send(event_type)
        hooks.drain()
    assert [event.event_type for event in seen] == list(EVENT_TYPES)
    assert json.loads(json.dumps(seen[0].payload)) == make_payload("memory_add")


def test_plugin_fixtures_are_available_to_users(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from mem0_receiver import Receiver

        receiver = Receiver()
        saved = []

        @receiver.on("memory_add")
        def remember(event):
            saved.append(event.memory)

        def test_remember(webhook_tester, mem0_payload):
            hooks = webhook_tester(receiver)
            hooks.send("memory_add", memory="Name is Alex")
            hooks.drain()
            assert saved == ["Name is Alex"]
            assert mem0_payload("memory_delete")["event_details"]["event"] == "DELETE"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_receiver_mounted_in_a_host_app_is_tested_through_that_app() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    receiver = Receiver(secrets=[new_secret()], environ={})
    seen: list[str] = []
    receiver.on("memory_add")(lambda event: seen.append(event.memory))
    app = Starlette(routes=[Mount("/webhooks/mem0", app=receiver)], lifespan=receiver.lifespan)
    with WebhookTester(receiver, app=app, path="/webhooks/mem0/") as hooks:
        hooks.send("memory_add", memory="Name is Alex")
        assert hooks.drain() == 1
    assert seen == ["Name is Alex"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"broker": "redis://127.0.0.1:1/0", "secrets": ["s"]},
            "leave MEM0_RECEIVER_BROKER_URL unset",
        ),
        ({}, "set MEM0_RECEIVER_SECRETS in tests"),
    ],
    ids=["durable-broker", "no-secret"],
)
def test_testing_through_a_host_app_says_what_the_mounted_receiver_needs(
    kwargs: dict[str, Any], message: str
) -> None:
    from mem0_receiver import ConfigurationError

    receiver = Receiver(environ={}, **kwargs)
    with pytest.raises(ConfigurationError, match=message):
        WebhookTester(receiver, app=receiver, path="/")
