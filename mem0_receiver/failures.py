"""The failure store: events whose handler gave up, kept until replayed or purged.

dramatiq's own dead-letter queue expires messages after seven days; this store
does not expire. Each entry names the handler, the event, how many attempts
were made, why it failed (the exception's type and message, or "worker
crashed"), and holds the message itself so that it can be replayed.
Entries are never logged with their error message: a handler's exception may
quote memory text.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis

__all__ = ["Failure", "FailureStore", "MemoryFailureStore", "RedisFailureStore"]

_MAX_ERROR = 500


@dataclass(frozen=True)
class Failure:
    """One handler run that will not be retried again."""

    id: str  # the dramatiq message id
    handler: str
    event_type: str
    memory_id: str | None
    delivery_id: str
    attempts: int
    reason: str  # "retries exhausted" or "worker crashed"
    error_type: str
    error: str
    failed_at: float
    message: dict[str, Any]  # the dramatiq message, as dramatiq.Message.asdict()

    @classmethod
    def from_message(
        cls,
        message: dict[str, Any],
        *,
        handler: str,
        reason: str,
        attempts: int,
        exception: BaseException | None = None,
    ) -> Failure:
        event = message.get("options", {}).get("mem0_event") or {}
        delivery = event.get("delivery", {})
        return cls(
            id=message["message_id"],
            handler=handler,
            event_type=str(event.get("event_type", "")),
            memory_id=event.get("memory_id"),
            delivery_id=str(delivery.get("delivery_id", "")),
            attempts=attempts,
            reason=reason,
            error_type=type(exception).__name__ if exception else "",
            error=str(exception)[:_MAX_ERROR] if exception else "",
            failed_at=time.time(),
            message=message,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> Failure:
        return cls(**json.loads(data))


class FailureStore(Protocol):
    def add(self, failure: Failure) -> None: ...

    def list(self, *, limit: int | None = None) -> list[Failure]:
        """Entries, oldest first."""

    def remove(self, ids: Iterable[str]) -> int: ...

    def count(self) -> int: ...


class RedisFailureStore:
    """A hash of entries and a sorted set by time, with no expiry."""

    def __init__(self, client: redis.Redis, *, namespace: str = "mem0_receiver") -> None:
        self.client = client
        self.entries = f"{namespace}:failures"
        self.index = f"{namespace}:failures:index"

    def add(self, failure: Failure) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.entries, failure.id, failure.to_json())
        pipe.zadd(self.index, {failure.id: failure.failed_at})
        pipe.execute()

    def list(self, *, limit: int | None = None) -> list[Failure]:
        ids: list[Any] = self.client.zrange(self.index, 0, -1 if limit is None else limit - 1)
        if not ids:
            return []
        values = self.client.hmget(self.entries, ids)
        return [Failure.from_json(value) for value in values if value is not None]

    def remove(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        if not ids:
            return 0
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.entries, *ids)
        pipe.zrem(self.index, *ids)
        removed, _ = pipe.execute()
        return int(removed)

    def count(self) -> int:
        return int(self.client.hlen(self.entries))


class MemoryFailureStore:
    """For the in-memory broker: as durable as the process."""

    def __init__(self) -> None:
        self._entries: dict[str, Failure] = {}
        self._lock = threading.Lock()

    def add(self, failure: Failure) -> None:
        with self._lock:
            self._entries[failure.id] = failure

    def list(self, *, limit: int | None = None) -> list[Failure]:
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda f: f.failed_at)
        return entries if limit is None else entries[:limit]

    def remove(self, ids: Iterable[str]) -> int:
        with self._lock:
            return sum(self._entries.pop(i, None) is not None for i in ids)

    def count(self) -> int:
        return len(self._entries)
