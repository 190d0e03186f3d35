"""pytest fixtures, registered through the ``pytest11`` entry point on install.

::

    def test_remember(webhook_tester):
        hooks = webhook_tester(receiver)
        hooks.send("memory_add", memory="Name is Alex")
        hooks.drain()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .receiver import Receiver
from .testing import WebhookTester, make_payload

__all__ = ["mem0_payload", "webhook_tester"]


@pytest.fixture
def mem0_payload() -> Callable[..., dict[str, Any]]:
    """:func:`mem0_receiver.testing.make_payload`: a documented payload for an event type."""
    return make_payload


@pytest.fixture
def webhook_tester() -> Iterator[Callable[..., WebhookTester]]:
    """Make a started :class:`WebhookTester` (same arguments); it is closed after the test."""
    testers: list[WebhookTester] = []

    def start(receiver: Receiver, **kwargs: Any) -> WebhookTester:
        tester = WebhookTester(receiver, **kwargs).__enter__()
        testers.append(tester)
        return tester

    yield start
    for tester in testers:
        tester.__exit__(None, None, None)
