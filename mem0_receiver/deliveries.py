"""What happened recently: deliveries with each handler's outcome, and queue depths.

Read by the deliveries page. Workers write the records as they finish each run
(tracking.py), in the same script that ends the run, so keeping them costs no
extra round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from .guard import DeliveryGuard
from .tracking import MemoryTracker

__all__ = ["DeliveryRecord", "queue_depths", "recent_deliveries"]


@dataclass(frozen=True)
class DeliveryRecord:
    delivery_id: str
    event_type: str
    memory_id: str | None
    received_at: float
    #: handler name -> "ok", "retrying", "failed", "crashed" or "skipped"
    handlers: dict[str, str] = field(default_factory=dict)


def _guard(broker: dramatiq.Broker) -> DeliveryGuard:
    return next(m for m in broker.middleware if isinstance(m, DeliveryGuard))


def recent_deliveries(broker: dramatiq.Broker, *, limit: int = 50) -> list[DeliveryRecord]:
    """The most recent deliveries a worker has touched, newest first."""
    client = _guard(broker).state
    if client is not None:
        ids: list[bytes] = client.zrevrange("mem0_receiver:deliveries", 0, limit - 1)  # type: ignore[assignment]
        pipe = client.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hgetall(b"mem0_receiver:delivery:" + delivery_id)
        records = []
        for delivery_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                records.append(_from_hash(delivery_id.decode(), raw))
        return records
    tracker = _guard(broker).tracker
    if not isinstance(tracker, MemoryTracker):
        return []
    items = list(tracker.deliveries.items())[-limit:]
    return [
        DeliveryRecord(
            delivery_id=delivery_id,
            event_type=record["event_type"],
            memory_id=record["memory_id"],
            received_at=record["received_at"],
            handlers=dict(record["handlers"]),
        )
        for delivery_id, record in reversed(items)
    ]


def _from_hash(delivery_id: str, raw: dict[bytes, bytes]) -> DeliveryRecord:
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    return DeliveryRecord(
        delivery_id=delivery_id,
        event_type=fields.get("event_type", ""),
        memory_id=fields.get("memory_id") or None,
        received_at=float(fields.get("received_at", 0) or 0),
        handlers={k[2:]: v for k, v in sorted(fields.items()) if k.startswith("h:")},
    )


def queue_depths(broker: dramatiq.Broker) -> dict[str, int]:
    """Messages waiting per queue (delayed retries included, under ``<queue>.DQ``)."""
    names = sorted(broker.get_declared_queues() | broker.get_declared_delay_queues())
    if isinstance(broker, RedisBroker):
        pipe = broker.client.pipeline(transaction=False)
        for name in names:
            pipe.hlen(f"{broker.namespace}:{name}.msgs")
        return {name: int(n) for name, n in zip(names, pipe.execute(), strict=True)}
    if isinstance(broker, StubBroker):
        return {name: broker.queues[name].qsize() for name in names if name in broker.queues}
    counts = getattr(broker, "get_queue_message_counts", None)  # RabbitMQ
    if counts is None:
        return {}
    # dramatiq keeps a channel per thread and does not forget it when the broker
    # is closed (as the receiver does at shutdown): start this thread afresh.
    state = getattr(broker, "state", None)
    channel = getattr(state, "channel", None)
    if channel is not None and not channel.is_open:
        del broker.connection  # type: ignore[attr-defined]
    depths = {}
    for name in sorted(broker.get_declared_queues()):
        ready, delayed, _dead = counts(name)
        depths[name], depths[f"{name}.DQ"] = int(ready), int(delayed)
    return depths
