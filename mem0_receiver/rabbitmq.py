"""RabbitMQ as the broker, with Redis keeping the state RabbitMQ cannot.

Messages go to RabbitMQ through dramatiq's ``RabbitmqBroker`` with publisher
confirms on (``confirm_delivery=True``), so a 202 still means the broker holds
the message. What the guarantees need besides a queue (duplicate suppression
across receivers, per-memory sequence numbers, completed-work keys, the
failure store) needs atomic counters and keys that expire, which RabbitMQ
does not have: those stay on a Redis named by ``MEM0_RECEIVER_STATE_URL``.

The enqueue is therefore two steps, not one atomic script: (1) one Redis
script claims the delivery and takes the sequence numbers, (2) the messages
are published and confirmed. If (2) fails, the claim is released and the
numbers are marked burned, so that later events about the memory do not wait
for messages that will never come (tracking.py skips burned numbers).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq

from .errors import BrokerUnavailable, ConfigurationError, EnqueueError
from .resp import Connection, pack
from .tracking import ORDER_TTL
from .worker import SEQ, Outgoing

__all__ = ["RABBITMQ_SCHEMES", "RabbitEnqueuer", "build_rabbitmq_broker"]

RABBITMQ_SCHEMES = ("amqp", "amqps")

# pika waits forever by default; a RabbitMQ that blocks publishers (memory or
# disk alarm) would then hang the request thread. Users' own values win.
_PIKA_DEFAULTS = {
    "connection_attempts": "1",
    "socket_timeout": "5",
    "blocked_connection_timeout": "5",
    "heartbeat": "30",
}

# KEYS[1]: the dedupe key. ARGV: delivery id, window (ms), order TTL (s), then
# order keys. Returns the first delivery's id for a duplicate, else the list
# of sequence numbers, one per order key.
_CLAIM_SCRIPT = """
local seen = redis.call("get", KEYS[1])
if seen then
    return seen
end
redis.call("set", KEYS[1], ARGV[1], "PX", ARGV[2])
local numbers = {}
for i = 4, #ARGV do
    numbers[#numbers + 1] = redis.call("hincrby", ARGV[i], "seq", 1)
    redis.call("expire", ARGV[i], ARGV[3])
end
return numbers
"""
_CLAIM_SHA = hashlib.sha1(_CLAIM_SCRIPT.encode()).hexdigest()


def build_rabbitmq_broker(url: str) -> dramatiq.Broker:
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError:
        raise ConfigurationError(
            "A RabbitMQ broker URL needs pika: pip install 'mem0-receiver[rabbitmq]'."
        ) from None
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query = {**_PIKA_DEFAULTS, **query}
    url = urlunsplit((*parts[:3], urlencode(query), parts.fragment))
    try:
        broker: dramatiq.Broker = RabbitmqBroker(url=url, confirm_delivery=True)
    except Exception as exc:  # pika validates the URL's parameters here
        raise ConfigurationError(f"The RabbitMQ URL is not valid: {exc}.") from None
    return broker


class RabbitEnqueuer:
    """Claim in Redis, then publish to RabbitMQ with confirms, in a thread."""

    def __init__(
        self, broker: dramatiq.Broker, *, state_url: str, timeout: float, dedupe_window: int
    ) -> None:
        self._broker = broker
        self._redis = Connection(state_url, connect_timeout=timeout)
        self._lock = asyncio.Lock()
        self._timeout = timeout
        self._window_ms = str(dedupe_window * 1000)

    async def _redis_call(self, command: bytes) -> Any:
        # One command at a time on the connection; each request's own deadline applies.
        async with self._lock:
            (reply,) = await asyncio.wait_for(self._redis.execute([command]), self._timeout)
        return reply

    async def enqueue(self, key: str, delivery_id: str, messages: Sequence[Outgoing]) -> str | None:
        ordered = [m for m in messages if m.order_key]
        dedupe_key = f"mem0_receiver:dedupe:{key}"
        args = [dedupe_key, delivery_id, self._window_ms, str(ORDER_TTL)]
        claim = pack("EVALSHA", _CLAIM_SHA, 1, *args, *(m.order_key or "" for m in ordered))
        try:
            reply = await self._redis_call(claim)
            if isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT"):
                claim = pack("EVAL", _CLAIM_SCRIPT, 1, *args, *(m.order_key or "" for m in ordered))
                reply = await self._redis_call(claim)
        except (asyncio.TimeoutError, OSError, ConnectionError) as exc:
            self._redis.close()
            raise BrokerUnavailable(f"Redis did not answer: {type(exc).__name__}.") from None
        if isinstance(reply, Exception):
            raise EnqueueError(f"Redis refused the claim: {reply}.")
        if isinstance(reply, bytes):
            return reply.decode()
        numbers = iter(reply)
        decoded = []
        for outgoing in messages:
            message = outgoing.to_message()
            if outgoing.order_key:
                message = message.copy(options={SEQ: next(numbers)})
            decoded.append(message)
        try:
            await asyncio.wait_for(asyncio.to_thread(self._publish, decoded), self._timeout)
        except (asyncio.TimeoutError, Exception) as exc:
            await self._release(dedupe_key, decoded)
            if isinstance(exc, asyncio.TimeoutError):
                raise EnqueueError("RabbitMQ did not confirm the message in time.") from None
            raise BrokerUnavailable(
                f"RabbitMQ did not take the message: {type(exc).__name__}."
            ) from exc
        return None

    def _publish(self, messages: Sequence[dramatiq.Message[Any]]) -> None:
        for message in messages:
            self._broker.enqueue(message)

    async def _release(self, dedupe_key: str, messages: Sequence[dramatiq.Message[Any]]) -> None:
        commands = [pack("DEL", dedupe_key)]
        for message in messages:
            order_key, seq = message.options.get("mem0_order"), message.options.get(SEQ)
            if order_key and isinstance(seq, int):
                commands.append(pack("HSET", order_key, f"burned:{seq}", 1))
        try:
            async with self._lock:
                await asyncio.wait_for(self._redis.execute(commands), self._timeout)
        except (asyncio.TimeoutError, OSError, ConnectionError):
            self._redis.close()

    async def ping(self) -> bool:
        try:
            reply = await self._redis_call(pack("PING"))
            await asyncio.wait_for(asyncio.to_thread(self._ping_rabbitmq), self._timeout)
        except Exception:
            return False
        return bool(reply == b"PONG")

    def _ping_rabbitmq(self) -> None:
        self._broker.connection.process_data_events(0)  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        self._redis.close()
        # The publishing threads' connections (dramatiq keeps one per thread).
        self._broker.close()
