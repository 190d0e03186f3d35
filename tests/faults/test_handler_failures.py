"""Handlers that always fail or kill their process: bounded attempts, the failure store, replay."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RedisServer
from fault_ledger import report, wait_until
from fault_load import event_body, run_load, spread
from fault_stack import Stack

from mem0_receiver import Receiver
from mem0_receiver.brokers import failure_store
from mem0_receiver.dlq import replay
from mem0_receiver.failures import Failure, FailureStore

FAILING = """
@receiver.on("memory_add", max_retries=2, min_backoff=100, max_backoff=200)
def mirror(event):
    if not os.path.exists(FLAG):
        record("failed", event)
        raise RuntimeError("the mirror refuses every event")
    record("handled", event)
"""

POISONED = """
@receiver.on("memory_add")
def remember(event):
    if event.memory_id == "poison":
        record("crashed", event)
        os._exit(1)  # as an out-of-memory kill or a segfault would end the process
    time.sleep(0.05)  # a call to a downstream service
    record("handled", event)
"""


@pytest.fixture
def operator(make_redis: Callable[..., RedisServer]) -> Iterator[Callable[[Stack], Receiver]]:
    """The operator's view of a stack's Redis: its broker and failure store."""
    receivers: list[Receiver] = []

    def connect(stack: Stack) -> Receiver:
        receiver = Receiver(secrets=[stack.secret], broker=stack.redis.url, environ={})
        receivers.append(receiver)
        return receiver

    yield connect
    for receiver in receivers:
        receiver.broker.client.close()


def failures_of(store: FailureStore, memory_id: str) -> list[Failure]:
    return [failure for failure in store.list() if failure.memory_id == memory_id]


def test_a_handler_that_always_fails_runs_three_times_then_is_stored_and_replays(
    tmp_path: Path,
    spawn: Callable[..., Any],
    make_redis: Callable[..., RedisServer],
    operator: Callable[[Stack], Receiver],
) -> None:
    redis = make_redis(appendonly=True)
    with Stack(tmp_path, spawn, redis, handlers=FAILING) as stack:
        url = stack.start(workers=1, threads=2)
        broker = operator(stack).broker
        store = failure_store(broker)

        sent = time.monotonic()
        response = httpx.post(url, content=event_body("doomed"), timeout=10)
        assert response.status_code == 202, response.text
        wait_until(lambda: bool(failures_of(store, "doomed")), timeout=30)
        stored_after = time.monotonic() - sent
        time.sleep(1.5)  # room for a wrong fourth run to show up
        runs_before_replay = stack.ledger.counts("failed")["doomed"]
        stored = failures_of(store, "doomed")
        assert len(stored) == 1, f"{stored}\n{stack.logs()}"
        failure = stored[0]

        stack.flag.touch()  # the downstream service is fixed
        count = replay(broker, store, [failure])
        handled = stack.ledger.wait_for("handled", ["doomed"], timeout=20)
        time.sleep(1.0)  # room for a wrong second run to show up
        report(
            "handler_always_fails",
            max_retries=2,
            runs_before_store=runs_before_replay,
            stored_after_s=stored_after,
            failure=(failure.reason, failure.attempts, failure.error_type),
            replayed=count,
            handled_after_replay_s=handled,
            runs_after_replay=stack.ledger.counts("handled")["doomed"],
            failed_runs_total=stack.ledger.counts("failed")["doomed"],
            store_left=store.count(),
        )
        assert runs_before_replay == 3
        assert (failure.reason, failure.attempts) == ("retries exhausted", 3)
        assert failure.handler.endswith("mirror") and failure.error_type == "RuntimeError"
        assert count == 1 and handled is not None
        assert stack.ledger.counts("handled")["doomed"] == 1
        assert stack.ledger.counts("failed")["doomed"] == 3
        assert store.count() == 0


@pytest.mark.timeout(180)
def test_a_poison_pill_is_stored_after_three_crashes_and_good_events_are_all_handled(
    tmp_path: Path,
    spawn: Callable[..., Any],
    make_redis: Callable[..., RedisServer],
    operator: Callable[[Stack], Receiver],
) -> None:
    redis = make_redis(appendonly=True)
    good = [f"good-{i:03d}" for i in range(100)]
    ids = [*good[:50], "poison", *good[50:]]
    with Stack(tmp_path, spawn, redis, handlers=POISONED) as stack:
        url = stack.start(workers=2, threads=4)
        store = failure_store(operator(stack).broker)

        started = time.monotonic()
        load = run_load(url, spread(ids, 0, 2.0))
        # Each crash strands the pill (and what its process had fetched) until the
        # heartbeat timeout (10 s) and a janitor pass (2 s) hand them to a live worker:
        # three crashes take about 40 s.
        stored = wait_until(lambda: bool(failures_of(store, "poison")), timeout=75, interval=0.2)
        stored_after = time.monotonic() - started
        settled = stack.ledger.wait_for("handled", good, timeout=20)
        settled_after = time.monotonic() - started
        time.sleep(1.0)
        handled = stack.ledger.counts("handled")
        failures = store.list()
        pill = failures_of(store, "poison")
        report(
            "poison_pill",
            sent=len(ids),
            statuses=load.result.statuses(),
            crashes=stack.ledger.counts("crashed")["poison"],
            worker_restarts=stack.restarts,
            stored=[(f.memory_id, f.reason, f.attempts) for f in failures],
            pill_stored_after_s=stored_after if stored else None,
            good_handled=sum(1 for i in good if handled[i]),
            good_duplicated=sum(1 for i in good if handled[i] > 1),
            good_lost=len(stack.ledger.missing("handled", good)),
            all_settled_after_s=settled_after if settled is not None else None,
        )
        assert load.result.statuses() == {"202": len(ids)}
        assert not stack.ledger.missing("handled", good), stack.logs()
        assert len(pill) == 1, stack.logs()
        assert (pill[0].reason, pill[0].attempts) == ("worker crashed", 3)
        assert stack.ledger.counts("crashed")["poison"] == 3
        assert len(failures) == 1, [(f.memory_id, f.reason, f.attempts) for f in failures]
