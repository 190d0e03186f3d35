"""What the deliveries page shows, read from the broker in one go.

Recent deliveries and their handlers' outcomes (deliveries.py), the delivery
rate over the last minute computed from their ``received_at``, queue depths,
and the oldest entries of the failure store. Reading blocks (Redis round
trips); the dashboard calls it from a thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import dramatiq

from .brokers import failure_store
from .deliveries import DeliveryRecord, queue_depths, recent_deliveries
from .failures import Failure

__all__ = ["RATE_SAMPLE", "RATE_WINDOW", "Activity", "Snapshot", "activity", "take_snapshot"]

#: Seconds over which the delivery rate is computed.
RATE_WINDOW = 60.0
#: Recent deliveries read to compute the rate; a busier minute shows as "≥".
RATE_SAMPLE = 1000


@dataclass(frozen=True)
class Activity:
    """What workers did with the deliveries received during the last ``window`` seconds."""

    deliveries: int
    runs: dict[str, int]  # handler outcome ("ok", "failed", …) -> how many
    window: float
    partial: bool  # the sample ended inside the window: the rate is a lower bound

    @property
    def rate(self) -> float:
        return self.deliveries / self.window


def activity(
    records: Sequence[DeliveryRecord], *, now: float, window: float = RATE_WINDOW, sample: int
) -> Activity:
    """Deliveries per second over ``window``, from records newest first (at most ``sample``)."""
    recent = [r for r in records if r.received_at >= now - window]
    runs = Counter(status for r in recent for status in r.handlers.values())
    partial = len(records) >= sample and len(recent) == len(records)
    return Activity(len(recent), dict(runs), window, partial)


@dataclass(frozen=True)
class Snapshot:
    """Everything the page shows."""

    broker: str
    deliveries: list[DeliveryRecord]  # newest first
    activity: Activity
    depths: dict[str, int]
    failures: list[Failure]  # oldest first
    failure_count: int


def take_snapshot(
    broker: dramatiq.Broker, *, broker_name: str, now: float, limit: int, failure_limit: int
) -> Snapshot:
    """Read deliveries, rates, queues and failures (blocking)."""
    store = failure_store(broker)
    sample = max(limit, RATE_SAMPLE)
    records = recent_deliveries(broker, limit=sample)
    return Snapshot(
        broker=broker_name,
        deliveries=records[:limit],
        activity=activity(records, now=now, sample=sample),
        depths=queue_depths(broker),
        failures=store.list(limit=failure_limit),
        failure_count=store.count(),
    )
