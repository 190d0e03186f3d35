"""Durable enqueue of an event's messages, with duplicate suppression, from the event loop.

The receiver answers 202 only after the broker holds the message, so this is
the acknowledgement's critical path. Two implementations:

* :class:`RedisEnqueuer` writes straight to dramatiq's Redis layout over its
  own connections (resp.py): one Lua script per delivery sets the dedupe key
  and pushes every handler's message atomically, and the scripts of the
  requests that arrive together (in one event-loop tick, at most
  ``EAGER_BATCH`` at a time) go to Redis in one write (group commit). Each
  request still gets its own answer from Redis.
* :class:`BrokerEnqueuer` calls ``broker.enqueue`` of any other dramatiq broker
  (the in-memory one, RabbitMQ) and remembers deliveries in this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import dramatiq
from dramatiq.brokers.stub import StubBroker
from redis.exceptions import RedisError

from .errors import BrokerUnavailable, EnqueueError
from .resp import Connection, pack
from .tracking import ORDER_TTL
from .worker import SEQ, Outgoing

__all__ = ["BrokerEnqueuer", "Enqueuer", "RedisEnqueuer"]

# Mirrors the "enqueue" command of dramatiq/brokers/redis/dispatch.lua: the
# message body goes into the "<queue>.msgs" hash and its id onto the "<queue>"
# list, where dramatiq's Redis consumer fetches it. A test runs real dramatiq
# workers on what this writes, so a change of layout in dramatiq fails loudly.
#
# It also numbers each handler's messages per memory: the message arrives in
# two parts, split where its sequence number goes, and the script joins them
# around the next number from the memory's order hash.
#
# KEYS[1]: the dedupe key. ARGV: delivery id, window (ms), order TTL (s), then
# groups of five: full queue name, redis message id, the encoded message (or
# its part before the number), order key and the part after the number (both
# empty for messages without a memory).
_ENQUEUE_SCRIPT = """
if not redis.call("set", KEYS[1], ARGV[1], "PX", ARGV[2], "NX") then
    return redis.call("get", KEYS[1])
end
for i = 4, #ARGV, 5 do
    local data = ARGV[i + 2]
    if ARGV[i + 3] ~= "" then
        local seq = redis.call("hincrby", ARGV[i + 3], "seq", 1)
        redis.call("expire", ARGV[i + 3], ARGV[3])
        data = data .. seq .. ARGV[i + 4]
    end
    redis.call("hset", ARGV[i] .. ".msgs", ARGV[i + 1], data)
    redis.call("rpush", ARGV[i], ARGV[i + 1])
end
return false
"""
_SCRIPT_SHA = hashlib.sha1(_ENQUEUE_SCRIPT.encode()).hexdigest()
_EVALSHA = b"$7\r\nEVALSHA\r\n$40\r\n" + _SCRIPT_SHA.encode() + b"\r\n$1\r\n1\r\n"


#: Requests written to Redis together as soon as this many wait, without waiting
#: for the end of the event loop's iteration (see RedisEnqueuer.enqueue).
EAGER_BATCH = 16


class Enqueuer(Protocol):
    """What the HTTP edge needs from the queue."""

    async def enqueue(self, key: str, delivery_id: str, messages: Sequence[Outgoing]) -> str | None:
        """Enqueue ``messages`` unless ``key`` was seen within the window.

        Returns ``None`` when enqueued, or the first delivery's id for a duplicate.
        Raises EnqueueError when the broker does not take them within the
        enqueuer's timeout.
        """

    async def ping(self) -> bool:
        """Whether the broker answers now."""

    async def aclose(self) -> None: ...


class RedisEnqueuer:
    """Group-committed enqueue onto dramatiq's Redis broker layout.

    Requests that arrive while a batch is in flight wait for the next one, so
    under load each write carries many requests; ``lanes`` bounds the
    connections (and batches in flight). Every request gets its answer, or an
    EnqueueError, within ``timeout`` seconds of calling :meth:`enqueue`.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "dramatiq",
        timeout: float,
        dedupe_window: int,
        lanes: int = 4,
    ) -> None:
        self._idle = [Connection(url, connect_timeout=timeout) for _ in range(lanes)]
        self._namespace = namespace
        self._timeout = timeout
        self._limits = _bulk(b"%d" % (dedupe_window * 1000)) + _bulk(b"%d" % ORDER_TTL)
        self._queues: dict[str, bytes] = {}
        self._pending: list[_Request] = []
        self._scheduled = False
        self._writes: set[asyncio.Task[None]] = set()

    async def enqueue(self, key: str, delivery_id: str, messages: Sequence[Outgoing]) -> str | None:
        # The EVALSHA command in the Redis protocol, written out here rather
        # than with resp.pack: it is built once per request.
        parts = [
            b"*%d\r\n" % (7 + 5 * len(messages)),
            _EVALSHA,
            _bulk(f"{self._namespace}:dedupe:{key}".encode()),
            _bulk(delivery_id.encode()),
            self._limits,
        ]
        for message in messages:
            if message.order_key and message.placeholder:
                before, _, after = message.body.partition(b'"%b"' % message.placeholder.encode())
                order_key = message.order_key.encode()
            else:
                before, order_key, after = message.body, b"", b""
            parts += (
                self._queue(message.queue_name),
                _bulk(message.message_id.encode()),
                _bulk(before),
                _bulk(order_key),
                _bulk(after),
            )
        loop = asyncio.get_running_loop()
        request = _Request(b"".join(parts), loop.create_future(), loop.time() + self._timeout)
        self._pending.append(request)
        if len(self._pending) >= EAGER_BATCH and self._idle:
            # Write a full batch at once rather than after this loop iteration:
            # Redis works on it while the loop parses the requests that arrived
            # with it. Otherwise the requests of a burst all go in one batch,
            # and the loop sits idle until Redis has run all of it (measured:
            # 15-20% of the time at c=64, nearly all requests awaiting Redis).
            self._write_pending()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await request.future

    def _queue(self, queue_name: str) -> bytes:
        packed = self._queues.get(queue_name)
        if packed is None:
            packed = self._queues[queue_name] = _bulk(f"{self._namespace}:{queue_name}".encode())
        return packed

    def _flush(self) -> None:
        self._scheduled = False
        self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending or not self._idle:
            return  # A lane that finishes writes what is pending.
        connection = self._idle.pop()
        batch, self._pending = self._pending, []
        # Written now when the connection is open; else the task connects first.
        commands = [request.command for request in batch]
        sent = connection.send(commands)
        task = asyncio.ensure_future(self._write(connection, batch, commands, sent))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(
        self, connection: Connection, batch: list[_Request], commands: list[bytes], sent: bool
    ) -> None:
        try:
            remaining = (
                min(request.deadline for request in batch) - asyncio.get_running_loop().time()
            )
            if remaining <= 0:
                raise asyncio.TimeoutError
            replies = await asyncio.wait_for(self._execute(connection, commands, sent), remaining)
        except asyncio.TimeoutError:
            connection.close()
            _fail(batch, EnqueueError("Redis did not answer in time."))
        except (RedisError, OSError) as exc:
            _fail(
                batch, BrokerUnavailable(f"Redis did not take the message: {type(exc).__name__}.")
            )
        else:
            for request, reply in zip(batch, replies, strict=True):
                if request.future.done():
                    continue
                if isinstance(reply, Exception):
                    request.future.set_exception(
                        EnqueueError(f"Redis refused the message: {reply}.")
                    )
                else:
                    request.future.set_result(reply.decode() if isinstance(reply, bytes) else None)
        finally:
            self._idle.append(connection)
            if self._pending and not self._scheduled:
                self._write_pending()

    async def _execute(
        self, connection: Connection, commands: list[bytes], sent: bool
    ) -> list[Any]:
        if sent:
            replies = await connection.replies(len(commands))
        else:
            replies = await connection.execute(commands)
        missing = [i for i, reply in enumerate(replies) if _is_noscript(reply)]
        if missing:
            # Redis restarted and forgot the script: load it, run those again.
            retry = [pack("SCRIPT", "LOAD", _ENQUEUE_SCRIPT)]
            retry += [commands[i] for i in missing]
            retried = await connection.execute(retry)
            for i, reply in zip(missing, retried[1:], strict=True):
                replies[i] = reply
        return replies

    async def ping(self) -> bool:
        if not self._idle:
            return True  # Every lane is busy writing: Redis is answering.
        connection = self._idle.pop()
        try:
            replies = await asyncio.wait_for(connection.execute([pack("PING")]), self._timeout)
            return bool(replies[0] == b"PONG")
        except (asyncio.TimeoutError, RedisError, OSError):
            connection.close()
            return False
        finally:
            self._idle.append(connection)

    async def aclose(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        for connection in self._idle:
            connection.close()


class _Request(NamedTuple):
    command: bytes
    future: asyncio.Future[str | None]
    deadline: float


def _bulk(data: bytes) -> bytes:
    """One argument of a command in the Redis protocol."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _fail(batch: list[_Request], error: Exception) -> None:
    for request in batch:
        if not request.future.done():
            request.future.set_exception(error)


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT")


class BrokerEnqueuer:
    """Enqueue through any dramatiq broker; duplicates are remembered in this process."""

    def __init__(self, broker: dramatiq.Broker, *, timeout: float, dedupe_window: int) -> None:
        self._broker = broker
        self._timeout = timeout
        self._window = dedupe_window
        self._seen: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._sequences: Counter[str] = Counter()

    def _remembered(self, key: str, now: float) -> str | None:
        while self._seen:
            oldest, (_, expires) = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[oldest]
        entry = self._seen.get(key)
        return entry[0] if entry else None

    async def enqueue(self, key: str, delivery_id: str, messages: Sequence[Outgoing]) -> str | None:
        now = time.monotonic()
        seen = self._remembered(key, now)
        if seen is not None:
            return seen
        # Claim the key before yielding to the loop, so that a concurrent
        # duplicate sees it; give it back if the broker refuses.
        self._seen[key] = (delivery_id, now + self._window)
        decoded = [self._numbered(message) for message in messages]
        try:
            if isinstance(self._broker, StubBroker):
                self._enqueue_all(decoded)
            else:
                await asyncio.wait_for(asyncio.to_thread(self._enqueue_all, decoded), self._timeout)
        except asyncio.TimeoutError:
            self._seen.pop(key, None)
            raise EnqueueError("The broker did not confirm the message in time.") from None
        except Exception as exc:
            self._seen.pop(key, None)
            raise BrokerUnavailable(
                f"The broker did not take the message: {type(exc).__name__}."
            ) from exc
        return None

    def _numbered(self, outgoing: Outgoing) -> dramatiq.Message[Any]:
        message = outgoing.to_message()
        if not outgoing.order_key:
            return message
        self._sequences[outgoing.order_key] += 1
        return message.copy(options={SEQ: self._sequences[outgoing.order_key]})

    def _enqueue_all(self, messages: Sequence[dramatiq.Message[Any]]) -> None:
        for message in messages:
            self._broker.enqueue(message)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
