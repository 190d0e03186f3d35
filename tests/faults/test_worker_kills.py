"""Worker processes killed with SIGKILL at random moments; every event is still handled."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import RedisServer
from fault_ledger import report
from fault_load import blocking, run_load, spread
from fault_stack import Stack

HANDLERS = """
@receiver.on("memory_add")
def remember(event):
    time.sleep(0.02)
    record("handled", event)
"""

EVENTS = 500
KILLS = 20
#: The load lasts LOAD_SECONDS; the kills fall at random moments within it, each on a
#: worker process that is consuming (a restarted command takes 2-3 s to get there).
LOAD_SECONDS = 24.0
#: A killed worker's messages come back after the heartbeat timeout (10 s) and the
#: janitor's next pass (2 s); the rest is slack for a busy machine.
RECOVERY_TIMEOUT = 45


def test_workers_killed_twenty_times_handle_every_event_at_least_once(
    tmp_path: Path, spawn: Callable[..., Any], make_redis: Callable[..., RedisServer]
) -> None:
    seed = int(os.environ.get("MEM0_FAULTS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    redis = make_redis(appendonly=True)
    ids = [f"kill9-{i:04d}" for i in range(EVENTS)]
    kills: list[tuple[float, int, list[int]]] = []

    with Stack(tmp_path, spawn, redis, handlers=HANDLERS) as stack:

        def kill_a_worker_process() -> None:
            # dramatiq's worker processes hold the messages; the command that forked
            # them exits when one dies, and the stack starts it again.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                slots = [slot for slot in range(2) if stack.worker_processes(slot)]
                if slots:
                    slot = rng.choice(slots)
                    killed = []
                    for pid in stack.worker_processes(slot):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            continue
                        killed.append(pid)
                    if killed:
                        kills.append((time.monotonic(), slot, killed))
                        return
                time.sleep(0.05)
            raise AssertionError("No worker process was consuming, to be killed:\n" + stack.logs())

        moments = sorted(rng.uniform(0.5, LOAD_SECONDS) for _ in range(KILLS))
        url = stack.start(workers=2, threads=4)
        started = time.monotonic()
        load = run_load(
            url,
            spread(ids, 0, LOAD_SECONDS),
            timeline=[(at, blocking("killed", kill_a_worker_process)) for at in moments],
        )
        accepted = load.result.accepted()
        complete = stack.ledger.wait_for("handled", ids, timeout=RECOVERY_TIMEOUT)
        handled = stack.ledger.counts("handled")
        last_kill = kills[-1][0] if kills else time.monotonic()
        report(
            "workers_killed",
            seed=seed,
            sent=len(ids),
            acknowledged=len(accepted),
            statuses=load.result.statuses(),
            kills=len(kills),
            kill_offsets_s=[round(at - started, 1) for at, _, _ in kills],
            worker_restarts=stack.restarts,
            handled=sum(1 for i in ids if handled[i]),
            duplicated=sum(1 for i in ids if handled[i] > 1),
            extra_runs=sum(handled[i] - 1 for i in ids if handled[i] > 1),
            lost=len(stack.ledger.missing("handled", ids)),
            recovery_after_last_kill_s=(
                time.monotonic() - last_kill if complete is not None else None
            ),
        )
        lost = stack.ledger.missing("handled", ids)
        assert not lost, f"Never handled (seed {seed}): {lost}\n{stack.logs()}"
        assert len(kills) == KILLS
        assert len(accepted) == EVENTS, load.result.statuses()
