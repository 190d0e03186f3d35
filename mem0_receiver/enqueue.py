"""Durable enqueue of an event's messages, with duplicate suppression, from the event loop.

The receiver answers 202 only after the broker holds the message, so this is
the acknowledgement's critical path. Two implementations:

* :class:`RedisEnqueuer` writes straight to dramatiq's Redis layout with
  ``redis.asyncio``: one Lua script per delivery sets the dedupe key and
  pushes every handler's message atomically, and the scripts of all requests
  that arrive in one event-loop tick go to Redis in one pipeline (group
  commit). Each request still gets its own answer from Redis.
* :class:`BrokerEnqueuer` calls ``broker.enqueue`` of any other dramatiq broker
  (the in-memory one, RabbitMQ) and remembers deliveries in this process.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import dramatiq
import redis.asyncio
from dramatiq.brokers.stub import StubBroker
from redis.exceptions import NoScriptError, RedisError

from .errors import BrokerUnavailable, EnqueueError
from .tracking import ORDER_TTL
from .worker import ORDER_KEY, SEQ

__all__ = ["BrokerEnqueuer", "Enqueuer", "RedisEnqueuer"]

# Mirrors the "enqueue" command of dramatiq/brokers/redis/dispatch.lua: the
# message body goes into the "<queue>.msgs" hash and its id onto the "<queue>"
# list, where dramatiq's Redis consumer fetches it. A test runs real dramatiq
# workers on what this writes, so a change of layout in dramatiq fails loudly.
#
# It also numbers each handler's messages per memory: the placeholder string
# the message carries is replaced by the next number from the memory's order
# hash (a plain find, since placeholders are random hex).
#
# KEYS[1]: the dedupe key. ARGV: delivery id, window (ms), order TTL (s), then
# groups of five: full queue name, redis message id, encoded message, order
# key and placeholder (both empty for messages without a memory).
_ENQUEUE_SCRIPT = """
local seen = redis.call("get", KEYS[1])
if seen then
    return seen
end
redis.call("set", KEYS[1], ARGV[1], "PX", ARGV[2])
for i = 4, #ARGV, 5 do
    local data = ARGV[i + 2]
    if ARGV[i + 3] ~= "" then
        local seq = redis.call("hincrby", ARGV[i + 3], "seq", 1)
        redis.call("expire", ARGV[i + 3], ARGV[3])
        local placeholder = '"' .. ARGV[i + 4] .. '"'
        local at = string.find(data, placeholder, 1, true)
        data = string.sub(data, 1, at - 1) .. seq .. string.sub(data, at + #placeholder)
    end
    redis.call("hset", ARGV[i] .. ".msgs", ARGV[i + 1], data)
    redis.call("rpush", ARGV[i], ARGV[i + 1])
end
return false
"""


class Enqueuer(Protocol):
    """What the HTTP edge needs from the queue."""

    async def enqueue(
        self, key: str, delivery_id: str, messages: Sequence[dramatiq.Message[Any]]
    ) -> str | None:
        """Enqueue ``messages`` unless ``key`` was seen within the window.

        Returns ``None`` when enqueued, or the first delivery's id for a duplicate.
        Raises EnqueueError when the broker does not take them.
        """

    async def ping(self) -> bool:
        """Whether the broker answers now."""

    async def aclose(self) -> None: ...


class RedisEnqueuer:
    """Group-committed enqueue onto dramatiq's Redis broker layout."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "dramatiq",
        timeout: float,
        dedupe_window: int,
        max_connections: int = 32,
    ) -> None:
        self._pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )
        self._client = redis.asyncio.Redis(connection_pool=self._pool)
        self._namespace = namespace
        self._window_ms = str(dedupe_window * 1000)
        self._sha: str | None = None
        self._batch: list[tuple[list[Any], asyncio.Future[str | None]]] = []
        self._writes: set[asyncio.Task[None]] = set()

    async def enqueue(
        self, key: str, delivery_id: str, messages: Sequence[dramatiq.Message[Any]]
    ) -> str | None:
        args: list[Any] = [
            f"{self._namespace}:dedupe:{key}",
            delivery_id,
            self._window_ms,
            ORDER_TTL,
        ]
        for message in messages:
            redis_id = message.message_id
            encoded = message.copy(options={"redis_message_id": redis_id}).encode()
            order_key = message.options.get(ORDER_KEY, "")
            placeholder = message.options.get(SEQ, "") if order_key else ""
            queue = f"{self._namespace}:{message.queue_name}"
            args += (queue, redis_id, encoded, order_key, placeholder)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        self._batch.append((args, future))
        if len(self._batch) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._write(batch))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, batch: list[tuple[list[Any], asyncio.Future[str | None]]]) -> None:
        try:
            results = await self._execute(batch)
            if any(isinstance(result, NoScriptError) for result in results):
                # Redis restarted and forgot the script: load it and run again.
                self._sha = None
                results = await self._execute(batch)
        except (RedisError, OSError) as exc:
            error = BrokerUnavailable(f"Redis did not take the message: {type(exc).__name__}.")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(EnqueueError(f"Redis refused the message: {result}."))
            else:
                future.set_result(result.decode() if isinstance(result, bytes) else None)

    async def _execute(self, batch: list[tuple[list[Any], asyncio.Future[str | None]]]) -> Any:
        if self._sha is None:
            self._sha = await self._client.script_load(_ENQUEUE_SCRIPT)
        pipe = self._client.pipeline(transaction=False)
        for args, _ in batch:
            pipe.evalsha(self._sha, 1, *args)
        return await pipe.execute(raise_on_error=False)

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def aclose(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self._client.aclose()
        await self._pool.disconnect()


class BrokerEnqueuer:
    """Enqueue through any dramatiq broker; duplicates are remembered in this process."""

    def __init__(self, broker: dramatiq.Broker, *, dedupe_window: int) -> None:
        self._broker = broker
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

    async def enqueue(
        self, key: str, delivery_id: str, messages: Sequence[dramatiq.Message[Any]]
    ) -> str | None:
        now = time.monotonic()
        seen = self._remembered(key, now)
        if seen is not None:
            return seen
        # Claim the key before yielding to the loop, so that a concurrent
        # duplicate sees it; give it back if the broker refuses.
        self._seen[key] = (delivery_id, now + self._window)
        messages = [self._numbered(message) for message in messages]
        try:
            if isinstance(self._broker, StubBroker):
                for message in messages:
                    self._broker.enqueue(message)
            else:
                await asyncio.to_thread(self._enqueue_all, messages)
        except Exception as exc:
            self._seen.pop(key, None)
            raise BrokerUnavailable(
                f"The broker did not take the message: {type(exc).__name__}."
            ) from exc
        return None

    def _numbered(self, message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
        order_key = message.options.get(ORDER_KEY)
        if not order_key:
            return message
        self._sequences[order_key] += 1
        return message.copy(options={SEQ: self._sequences[order_key]})

    def _enqueue_all(self, messages: Sequence[dramatiq.Message[Any]]) -> None:
        for message in messages:
            self._broker.enqueue(message)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
