"""Per-message bookkeeping on the worker side: attempts, completed work, and order.

Three kinds of key, all in Redis for a Redis broker (in memory for the
in-memory broker), each read and written by one script per hook:

* ``attempts:<redis message id>`` counts runs that *started*; it is deleted when
  a run ends, so what is left counts runs that crashed their process.
* ``done:<handler>:<idempotency key>`` marks a handler's completed work on one
  event, so a redelivery does not run it again.
* ``order:<handler>:<memory id>`` is a hash: ``seq``, the last sequence number
  the receiver assigned, and ``applied``, the last one this handler finished.
* ``delivery:<delivery id>`` is a hash of what each handler did with one
  delivery (``ok``, ``retrying``, ``failed``, ``crashed``, ``skipped``), plus the
  event type, memory id and time received; ``deliveries`` indexes the most
  recent ones by time. The deliveries page reads them (deliveries.py).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import ResponseError

from .resp import SyncConnection, pack

__all__ = ["Begin", "MemoryTracker", "Outcome", "RedisTracker", "Tracker"]

#: Seconds an attempt counter lives if its process dies and nobody returns.
ATTEMPT_TTL = 86_400
#: Seconds a handler's completed work is remembered.
DONE_TTL = 7 * 86_400
#: Seconds a memory's order state outlives its last event.
ORDER_TTL = 30 * 86_400


#: Seconds a delivery's record is kept, and how many recent ones are indexed.
DELIVERY_TTL = 7 * 86_400
RECENT_DELIVERIES = 10_000


@dataclass(frozen=True)
class Outcome:
    """What one handler did with one delivery, for the deliveries page."""

    delivery_id: str
    handler: str
    status: str
    event_type: str
    memory_id: str | None
    received_at: float  # epoch seconds


@dataclass(frozen=True)
class Begin:
    attempts: int  # including this one
    done: bool  # the handler already completed this event
    applied: int  # the last sequence number the handler finished for this memory


class Tracker(Protocol):
    def begin(self, attempt_key: str, done_key: str, order_key: str | None) -> Begin: ...

    def end(
        self,
        attempt_key: str,
        *,
        done_key: str | None,
        order_key: str | None,
        seq: int | None,
        outcome: Outcome | None = None,
    ) -> None:
        """Forget the attempt; mark the work done; move the memory's order past ``seq``;
        record the outcome."""

    def uncount(self, attempt_key: str) -> None:
        """Take back the run counted by :meth:`begin` (it has to wait)."""

    def count(self, attempt_key: str) -> None:
        """Count it again (it starts now)."""

    def close(self) -> None: ...


_BEGIN = """
local attempts = redis.call("incr", KEYS[1])
redis.call("expire", KEYS[1], ARGV[1])
local done = redis.call("exists", KEYS[2])
local applied = 0
if ARGV[2] ~= "" then
    applied = tonumber(redis.call("hget", ARGV[2], "applied") or "0")
    -- Numbers the receiver took for messages it then failed to publish
    -- (rabbitmq.py) will never arrive: step over them.
    while redis.call("hdel", ARGV[2], "burned:" .. (applied + 1)) == 1 do
        applied = applied + 1
        redis.call("hset", ARGV[2], "applied", applied)
    end
end
return {attempts, done, applied}
"""

_END = """
redis.call("del", KEYS[1])
if ARGV[1] ~= "" then
    redis.call("set", ARGV[1], "1", "EX", ARGV[2])
end
if ARGV[3] ~= "" then
    local applied = tonumber(redis.call("hget", ARGV[3], "applied") or "0")
    if tonumber(ARGV[4]) > applied then
        redis.call("hset", ARGV[3], "applied", ARGV[4])
    end
    redis.call("expire", ARGV[3], ARGV[5])
end
if ARGV[6] ~= "" then
    local record = "mem0_receiver:delivery:" .. ARGV[6]
    redis.call("hset", record, "h:" .. ARGV[7], ARGV[8], "event_type", ARGV[9],
               "memory_id", ARGV[10], "received_at", ARGV[11])
    redis.call("expire", record, ARGV[12])
    redis.call("zadd", "mem0_receiver:deliveries", ARGV[11], ARGV[6])
    redis.call("zremrangebyrank", "mem0_receiver:deliveries", 0, -ARGV[13] - 1)
end
return 1
"""


_SHAS = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_BEGIN, _END)}


class RedisTracker:
    def __init__(self, url: str, *, timeout: float) -> None:
        self._connection = SyncConnection(url, timeout=timeout)

    def _run(self, script: str, *args: str | int) -> Any:
        reply = self._connection.execute(pack("EVALSHA", _SHAS[script], *args))
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
            reply = self._connection.execute(pack("EVAL", script, *args))
        if isinstance(reply, Exception):
            raise reply
        return reply

    def begin(self, attempt_key: str, done_key: str, order_key: str | None) -> Begin:
        attempts, done, applied = self._run(
            _BEGIN, 2, attempt_key, done_key, ATTEMPT_TTL, order_key or ""
        )
        return Begin(int(attempts), bool(done), int(applied))

    def end(
        self,
        attempt_key: str,
        *,
        done_key: str | None,
        order_key: str | None,
        seq: int | None,
        outcome: Outcome | None = None,
    ) -> None:
        ordered = order_key if order_key and seq else ""
        record: tuple[str | int, ...] = ("",) * 8
        if outcome is not None:
            record = (
                outcome.delivery_id,
                outcome.handler,
                outcome.status,
                outcome.event_type,
                outcome.memory_id or "",
                repr(outcome.received_at),
                DELIVERY_TTL,
                RECENT_DELIVERIES,
            )
        self._run(
            _END, 1, attempt_key, done_key or "", DONE_TTL, ordered, seq or 0, ORDER_TTL, *record
        )

    def uncount(self, attempt_key: str) -> None:
        self._connection.execute(pack("DECR", attempt_key))

    def count(self, attempt_key: str) -> None:
        self._connection.execute(pack("INCR", attempt_key))

    def close(self) -> None:
        self._connection.close()


class MemoryTracker:
    """The same bookkeeping in this process, for the in-memory broker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._done: dict[str, float] = {}
        self._applied: dict[str, int] = {}
        #: delivery id -> record, oldest first (the deliveries page reads it).
        self.deliveries: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def begin(self, attempt_key: str, done_key: str, order_key: str | None) -> Begin:
        with self._lock:
            attempts = self._attempts[attempt_key] = self._attempts.get(attempt_key, 0) + 1
            done = self._done.get(done_key, 0) > time.monotonic()
            applied = self._applied.get(order_key, 0) if order_key else 0
        return Begin(attempts, done, applied)

    def end(
        self,
        attempt_key: str,
        *,
        done_key: str | None,
        order_key: str | None,
        seq: int | None,
        outcome: Outcome | None = None,
    ) -> None:
        with self._lock:
            if outcome is not None:
                record = self.deliveries.setdefault(
                    outcome.delivery_id,
                    {
                        "event_type": outcome.event_type,
                        "memory_id": outcome.memory_id,
                        "received_at": outcome.received_at,
                        "handlers": {},
                    },
                )
                record["handlers"][outcome.handler] = outcome.status
                while len(self.deliveries) > RECENT_DELIVERIES:
                    self.deliveries.popitem(last=False)
            self._attempts.pop(attempt_key, None)
            if done_key:
                self._done[done_key] = time.monotonic() + DONE_TTL
            if order_key and seq:
                self._applied[order_key] = max(seq, self._applied.get(order_key, 0))

    def uncount(self, attempt_key: str) -> None:
        with self._lock:
            self._attempts[attempt_key] = self._attempts.get(attempt_key, 1) - 1

    def count(self, attempt_key: str) -> None:
        with self._lock:
            self._attempts[attempt_key] = self._attempts.get(attempt_key, 0) + 1

    def close(self) -> None:
        return None
