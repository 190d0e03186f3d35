"""The worker side: each handler becomes a dramatiq actor of its own.

One actor per handler means each handler has its own retries: when one fails
and is retried, its siblings, which already succeeded, do not run again.
Messages carry the event as JSON (``events.event_json``: the body as Mem0
sent it, and how it was delivered), never pickle, and the same parser and
pydantic classes rebuild it here.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, NamedTuple

import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import CurrentMessage

from .events import event_from_json
from .registry import Handler

__all__ = ["EVENT", "ORDER_KEY", "SEQ", "Outgoing", "bind_handler", "bootstrap", "encode_message"]

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


class Outgoing(NamedTuple):
    """One handler's message about one event, already encoded as dramatiq's JSON.

    A named tuple rather than a frozen dataclass: one is built per handler per
    request, and a frozen dataclass costs several times more to build.
    """

    queue_name: str
    message_id: str
    body: bytes
    #: For events about a memory: the order hash, and the placeholder string
    #: the enqueuer replaces with the message's sequence number.
    order_key: str | None = None
    placeholder: str | None = None

    def to_message(self) -> dramatiq.Message[Any]:
        return dramatiq.Message.decode(self.body)


@functools.cache
def _message_parts(queue_name: str, actor_name: str) -> tuple[str, str]:
    """What every message of one handler starts with, and its order keys' prefix."""
    head = (
        f'{{"queue_name":{_quote(queue_name)},"actor_name":{_quote(actor_name)},'
        f'"args":[],"kwargs":{{}},"options":{{"{EVENT}":'
    )
    return head, f"mem0_receiver:order:{actor_name}:"


def encode_message(handler: Handler, event_json: str, memory_id: str | None) -> Outgoing:
    """The message that runs ``handler`` on one event (``events.event_json``).

    Built as text rather than through ``dramatiq.Message.encode()``: this runs
    on the acknowledgement path, and the event is already JSON. The result is
    what ``Message(...).encode()`` would give, and ``Message.decode`` reads it.
    The event travels in the options, not the arguments, because dramatiq logs
    messages as "actor(*args)" (dramatiq/message.py, ``Message.__str__``), at
    WARNING and ERROR too, and memory text must never reach a log.
    """
    message_id = os.urandom(16).hex()
    head, order_prefix = _message_parts(handler.queue_name, handler.actor_name)
    order_key = placeholder = None
    order = ""
    if memory_id:
        order_key = order_prefix + memory_id
        placeholder = os.urandom(16).hex()
        order = f',"{ORDER_KEY}":{_quote(order_key)},"{SEQ}":"{placeholder}"'
    body = (
        f'{head}{event_json},"redis_message_id":"{message_id}"{order}}},'
        f'"message_id":"{message_id}","message_timestamp":{int(time.time() * 1000)}}}'
    )
    return Outgoing(handler.queue_name, message_id, body.encode(), order_key, placeholder)


def bootstrap() -> None:
    """Entry point for ``dramatiq mem0_receiver.worker:bootstrap`` in each worker process."""
    from .target import load_receiver

    receiver = load_receiver(os.environ[ENV_TARGET])
    if receiver.settings.metrics:
        # Imported here, after `mem0-receiver worker` put prometheus-client in
        # multiprocess mode (metrics.py).
        from .metrics import WorkerPrometheus

        receiver.broker.add_middleware(WorkerPrometheus())
    dramatiq.set_broker(receiver.broker)
