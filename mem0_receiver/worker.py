"""The worker side: each handler becomes a dramatiq actor of its own.

One actor per handler means each handler has its own retries: when one fails
and is retried, its siblings, which already succeeded, do not run again.
Messages carry the event as JSON (``event.model_dump(mode="json")``), never
pickle, and the same pydantic classes rebuild it here.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import CurrentMessage

from .events import event_from_json
from .registry import Handler

__all__ = ["EVENT", "ORDER_KEY", "SEQ", "bind_handler", "bootstrap", "build_message"]

#: Message options that carry per-memory order (read by guard.DeliveryGuard).
ORDER_KEY = "mem0_order"
SEQ = "mem0_seq"
#: The message option that carries the event.
EVENT = "mem0_event"

logger = logging.getLogger("mem0_receiver.worker")

#: Set by ``mem0-receiver worker`` so that dramatiq's worker processes can
#: find the receiver: dramatiq imports ``mem0_receiver.worker:bootstrap`` in
#: each process, which imports the user's TARGET.
ENV_TARGET = "MEM0_RECEIVER_TARGET"


def _runner(handler: Handler) -> Callable[[], None]:
    fn = handler.fn

    def run() -> None:
        message = CurrentMessage.get_current_message()
        if message is None:  # pragma: no cover - CurrentMessage is always installed
            raise RuntimeError("mem0-receiver handlers run only inside a dramatiq worker.")
        event = event_from_json(message.options[EVENT])
        logger.debug(
            "Running handler=%s delivery=%s event=%s memory_id=%s",
            handler.name,
            event.delivery.delivery_id,
            event.event_type,
            event.memory_id,
        )
        if handler.is_async:
            # As dramatiq's async_to_sync does, on the AsyncIO middleware's loop.
            loop_thread = get_event_loop_thread()
            if loop_thread is None:  # pragma: no cover - AsyncIO is always installed
                raise RuntimeError("The AsyncIO middleware is missing from the broker.")
            loop_thread.run_coroutine(fn(event))
        else:
            fn(event)

    run.__name__ = handler.name
    return run


def bind_handler(broker: dramatiq.Broker, handler: Handler) -> dramatiq.Actor[Any, Any]:
    """Declare ``handler`` as an actor on ``broker`` (once per broker)."""
    if handler.actor_name in broker.actors:
        actor: dramatiq.Actor[Any, Any] = broker.get_actor(handler.actor_name)
        return actor
    return dramatiq.Actor(
        _runner(handler),
        broker=broker,
        actor_name=handler.actor_name,
        queue_name=handler.queue_name,
        priority=handler.priority,
        options={
            "max_retries": handler.max_retries,
            "min_backoff": handler.min_backoff,
            "max_backoff": handler.max_backoff,
            "time_limit": handler.time_limit,
        },
    )


def build_message(handler: Handler, event_json: dict[str, Any]) -> dramatiq.Message[Any]:
    """The message that runs ``handler`` on one event.

    Events about a memory carry an order key and a placeholder for their
    sequence number, which the enqueuer replaces with the next number for that
    handler and memory when the broker takes the message (see guard.py).
    """
    # The event travels in the options, not the arguments: dramatiq logs
    # messages as "actor(*args)" (dramatiq/message.py, Message.__str__), at
    # WARNING and ERROR too, and memory text must never reach a log.
    options: dict[str, Any] = {EVENT: event_json}
    memory_id = event_json.get("memory_id")
    if memory_id:
        options[ORDER_KEY] = f"mem0_receiver:order:{handler.actor_name}:{memory_id}"
        options[SEQ] = uuid.uuid4().hex
    return dramatiq.Message(
        queue_name=handler.queue_name,
        actor_name=handler.actor_name,
        args=(),
        kwargs={},
        options=options,
    )


def bootstrap() -> None:
    """Entry point for ``dramatiq mem0_receiver.worker:bootstrap`` in each worker process."""
    from .target import load_receiver

    receiver = load_receiver(os.environ[ENV_TARGET])
    dramatiq.set_broker(receiver.broker)
