"""Redis hangs, stops and crashes under a load of signed POSTs; no acknowledged event is lost."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import RedisServer
from fault_ledger import report
from fault_load import Load, LoadResult, blocking, run_load, spread
from fault_procs import Sampler
from fault_stack import Stack

HANDLERS = """
@receiver.on("memory_add")
def remember(event):
    time.sleep(0.005)
    record("handled", event)
"""

#: Receiver(enqueue_timeout=...) of the app: how long a request may wait for Redis.
ENQUEUE_TIMEOUT = 0.5
#: What a request may take beyond the enqueue deadline: HTTP, parsing, a busy 2-core machine.
LATENCY_MARGIN = 1.0
#: The server talks to Redis over RedisEnqueuer's 4 lanes (a connection each) and the
#: broker client of its start-up checks; a leak under this load would reach hundreds.
MAX_REDIS_CONNECTIONS = 8
#: The server starts no thread per request; this leaves room for asyncio's default
#: executor (at most min(32, cpus + 4) threads) should a reconnect resolve an address.
MAX_EXTRA_THREADS = 8
#: Seconds the ledger may take to catch up once Redis is back.
DRAIN_TIMEOUT = 30


def check_answers(result: LoadResult) -> None:
    for answer in result.answers:
        assert answer.status in (202, 503), answer
        if answer.status == 503:
            assert answer.retry_after, answer
        else:
            assert answer.outcome == "queued", answer


def settle(stack: Stack, load: Load, *, since: str) -> tuple[dict[str, Any], list[str]]:
    """Wait for the ledger to hold every 202; return the figures and the 202s it lacks."""
    result = load.result
    accepted = result.accepted()
    complete = stack.ledger.wait_for("handled", accepted, timeout=DRAIN_TIMEOUT)
    handled = stack.ledger.counts("handled")
    lost = stack.ledger.missing("handled", accepted)
    ids = [answer.memory_id for answer in result.answers]
    numbers: dict[str, Any] = {
        "sent": len(ids),
        "statuses": result.statuses(),
        "acknowledged": len(accepted),
        "handled": sum(1 for i in ids if handled[i]),
        "handled_after_503": sum(1 for a in result.with_status(503) if handled[a.memory_id]),
        "duplicated": sum(1 for i in ids if handled[i] > 1),
        "lost": len(lost),
        "max_latency_s": result.max_latency(),
        "p99_latency_s": result.p99_latency(),
        f"ledger_complete_after_{since}_s": (
            time.monotonic() - load.marks[since] if complete is not None else None
        ),
        "worker_restarts": stack.restarts,
    }
    if lost:
        # Where are they? Crashing the workers tells "stuck in a live worker's hands"
        # (they come back after the heartbeat timeout) from "gone".
        crashed = time.monotonic()
        stack.crash_workers()
        back = stack.ledger.wait_for("handled", lost, timeout=25)
        numbers["lost_handled_after_worker_restart_s"] = (
            time.monotonic() - crashed if back is not None else None
        )
    return numbers, lost


@pytest.mark.timeout(180)
def test_frozen_then_restarted_redis_gets_503_within_the_deadline_and_loses_no_202(
    tmp_path: Path, spawn: Callable[..., Any], make_redis: Callable[..., RedisServer]
) -> None:
    redis = make_redis(appendonly=True)
    before = [f"before-{i:04d}" for i in range(60)]
    burst = [f"burst-{i:04d}" for i in range(10)]
    during = [f"during-{i:04d}" for i in range(240)]

    async def burst_then_freeze(load: Load) -> None:
        # After a quiet spell (the idle worker polls Redis about once a second), a
        # burst is acknowledged and Redis hangs before the worker has fetched it.
        await load.burst(burst)
        redis.freeze()
        load.mark("frozen")

    # Events flow, pause, burst; Redis is frozen for 6 s, longer than the enqueue
    # deadline and than the workers' 5 s socket timeout (brokers.DEFAULT_SOCKET_TIMEOUT),
    # so both sides give up on it; then a clean stop (SIGTERM: the AOF is flushed) and
    # a restart on the same port and directory, while events keep coming.
    schedule = spread(before, 0.0, 1.5) + spread(during, 3.2, 15.0)
    timeline = [
        (3.0, burst_then_freeze),
        (9.0, blocking("thawed", redis.thaw)),
        (10.0, blocking("stopped", redis.stop)),
        (12.0, blocking("restarted", redis.start)),
    ]
    with Stack(
        tmp_path,
        spawn,
        redis,
        handlers=HANDLERS,
        receiver_kwargs=f"enqueue_timeout={ENQUEUE_TIMEOUT}",
    ) as stack:
        url = stack.start(workers=1, threads=4)
        assert stack.server is not None
        with Sampler(stack.server.pid, redis.port) as sampler:
            time.sleep(0.3)
            baseline_threads = min(sampler.threads)
            baseline_connections = max(sampler.connections)
            load = run_load(url, schedule, timeline=timeline)
        numbers, lost = settle(stack, load, since="restarted")
        numbers.update(
            server_threads_baseline=baseline_threads,
            server_threads_max=max(sampler.threads),
            server_redis_connections_baseline=baseline_connections,
            server_redis_connections_max=max(sampler.connections),
        )
        report("redis_frozen_then_restarted", **numbers)
        assert not lost, f"Acknowledged but never handled: {lost}\n{stack.logs()}"
        check_answers(load.result)
        assert load.result.with_status(503), "The faults did not reach the requests."
        assert load.result.max_latency() <= ENQUEUE_TIMEOUT + LATENCY_MARGIN
        assert max(sampler.threads) <= baseline_threads + MAX_EXTRA_THREADS
        assert max(sampler.connections) <= MAX_REDIS_CONNECTIONS


@pytest.mark.timeout(180)
@pytest.mark.parametrize("appendfsync", ["everysec", "always"])
def test_redis_killed_under_load_loses_no_acknowledged_event(
    appendfsync: str,
    tmp_path: Path,
    spawn: Callable[..., Any],
    make_redis: Callable[..., RedisServer],
) -> None:
    # Both are asserted strictly. kill -9 ends the process, not the machine: what
    # Redis wrote to its AOF is in the page cache either way, and Redis writes the
    # AOF before it answers (with everysec it may postpone that write for up to 2 s
    # while an fsync is slow, which would lose answered writes; this checks it does not).
    redis = make_redis(appendonly=True)
    redis.args += ["--appendfsync", appendfsync]
    redis.stop()
    redis.start()
    ids = [f"kill-{i:04d}" for i in range(300)]
    timeline = [
        (2.0, blocking("killed", lambda: redis.stop(signal.SIGKILL))),
        (3.5, blocking("restarted", redis.start)),
    ]
    with Stack(
        tmp_path,
        spawn,
        redis,
        handlers=HANDLERS,
        receiver_kwargs=f"enqueue_timeout={ENQUEUE_TIMEOUT}",
    ) as stack:
        url = stack.start(workers=1, threads=4)
        load = run_load(url, spread(ids, 0.0, 6.0), timeline=timeline)
        numbers, lost = settle(stack, load, since="restarted")
        report(f"redis_killed_appendfsync_{appendfsync}", appendfsync=appendfsync, **numbers)
        assert not lost, f"Acknowledged but never handled: {lost}\n{stack.logs()}"
        check_answers(load.result)
        assert load.result.with_status(503), "The faults did not reach the requests."
        assert load.result.max_latency() <= ENQUEUE_TIMEOUT + LATENCY_MARGIN
