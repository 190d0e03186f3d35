"""Count the messages an app actually left in Redis, to compare with the 202s it answered."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis


@dataclass(frozen=True)
class MessageCount:
    """Messages found in Redis. ``consistent`` is False when the broker's bookkeeping disagrees
    with itself (e.g. a dramatiq queue list and its ``.msgs`` hash have different sizes)."""

    total: int
    detail: dict[str, int] = field(default_factory=dict)
    consistent: bool = True


def count_dramatiq_queue(
    client: redis.Redis, queue: str = "default", namespace: str = "dramatiq"
) -> MessageCount:
    """One dramatiq queue: the list of message ids plus the ``.msgs`` hash holding the bodies.

    dramatiq's enqueue writes both (HSET + RPUSH in one Lua script), so with no worker running
    they must have the same size; the count is the list length.
    """
    key = f"{namespace}:{queue}"
    listed = int(client.llen(key))
    stored = int(client.hlen(f"{key}.msgs"))
    return MessageCount(listed, {key: listed, f"{key}.msgs": stored}, listed == stored)


def count_dramatiq_messages(client: redis.Redis, namespace: str = "dramatiq") -> MessageCount:
    """Every message in every dramatiq queue of ``namespace``: the sum of all ``namespace:*`` lists.

    Queue lists (including delay queues ``*.DQ``) are the only lists dramatiq keeps; the
    ``.msgs`` hashes are summed too and must match, since no worker is consuming. SCAN filters
    by type on the server, so other keys (e.g. mem0-receiver's dedupe keys) cost no round trip.
    """
    lists = _sizes(client, f"{namespace}:*", "list")
    hashes = _sizes(client, f"{namespace}:*.msgs", "hash")
    total = sum(lists.values())
    return MessageCount(total, {**lists, **hashes}, total == sum(hashes.values()))


def _sizes(client: redis.Redis, pattern: str, kind: str) -> dict[str, int]:
    keys = sorted(
        key.decode() if isinstance(key, bytes) else str(key)
        for key in client.scan_iter(match=pattern, count=1000, _type=kind)
    )
    pipe = client.pipeline(transaction=False)
    for key in keys:
        (pipe.llen if kind == "list" else pipe.hlen)(key)
    return dict(zip(keys, (int(n) for n in pipe.execute()), strict=True))


def count_celery_queue(client: redis.Redis, queue: str = "celery") -> MessageCount:
    """Celery's Redis transport keeps a queue as one list of serialized messages."""
    listed = int(client.llen(queue))
    return MessageCount(listed, {queue: listed})
