"""Dead letters: list, replay and purge the events in the failure store.

A replayed event is enqueued again with a fresh set of retries, marked so
that it runs even though later events about the same memory have been applied
since (per-memory order is for live traffic; a replay is the operator's call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone

import dramatiq

from .failures import Failure, FailureStore

__all__ = ["describe", "purge", "replay", "select"]

# Options that belong to the failed run, not to the message being replayed.
_RUN_OPTIONS = (
    "retries",
    "traceback",
    "requeue_timestamp",
    "redis_message_id",
    "eta",
    "mem0_waits",
)


def select(
    failures: Iterable[Failure], *, handler: str | None = None, ids: Sequence[str] = ()
) -> list[Failure]:
    """The failures of ``handler`` and/or with these ids (or delivery ids); all by default."""
    chosen = []
    for failure in failures:
        if handler is not None and failure.handler != handler:
            continue
        if ids and failure.id not in ids and failure.delivery_id not in ids:
            continue
        chosen.append(failure)
    return chosen


def describe(failure: Failure) -> str:
    """One line for a terminal."""
    when = datetime.fromtimestamp(failure.failed_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    error = f"{failure.error_type}: {failure.error}" if failure.error_type else failure.reason
    return (
        f"{failure.id}  {when}  {failure.handler}  {failure.event_type}  "
        f"memory={failure.memory_id or '-'}  attempts={failure.attempts}  {error}"
    )


def replay(
    broker: dramatiq.Broker,
    store: FailureStore,
    failures: Iterable[Failure],
    *,
    advance: Callable[[], None] = lambda: None,
) -> int:
    """Enqueue each failure again, then remove it from the store; return how many."""
    count = 0
    for failure in failures:
        data = dict(failure.message)
        options = {k: v for k, v in data.pop("options", {}).items() if k not in _RUN_OPTIONS}
        options["mem0_replay"] = True
        message: dramatiq.Message[object] = dramatiq.Message(**{**data, "options": options})
        broker.enqueue(message)
        # Removed only once the broker holds the message: a crash in between
        # leaves a duplicate, never a loss.
        store.remove([failure.id])
        count += 1
        advance()
    return count


def purge(store: FailureStore, failures: Iterable[Failure]) -> int:
    return store.remove(failure.id for failure in failures)
