"""The same webhook POSTed many times at once has one side effect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import RedisServer
from fault_ledger import report, wait_until
from fault_load import Load
from fault_stack import Stack

HANDLERS = """
@receiver.on("memory_add")
def remember(event):
    record("handled", event)
"""

COPIES = 20


def test_twenty_concurrent_copies_of_one_body_have_one_side_effect(
    tmp_path: Path, spawn: Callable[..., Any], make_redis: Callable[..., RedisServer]
) -> None:
    redis = make_redis(appendonly=True)
    with Stack(tmp_path, spawn, redis, handlers=HANDLERS) as stack:
        url = stack.start(workers=2, threads=4)

        load = Load(url)

        async def post_copies() -> None:
            # The burst needs the load's client; a run without paced events gives it one.
            async def burst(load: Load) -> None:
                await load.burst(["same"] * COPIES)

            await load.run([], timeline=[(0.0, burst)])

        asyncio.run(post_copies())
        answers = load.result.answers
        handled = wait_until(lambda: stack.ledger.counts("handled")["same"] >= 1, timeout=15)
        time.sleep(1.5)  # room for a wrong second run to show up
        runs = stack.ledger.counts("handled")["same"]
        outcomes = sorted(a.outcome or str(a.status) for a in answers)
        report(
            "duplicate_posts",
            sent=len(answers),
            statuses=load.result.statuses(),
            queued=outcomes.count("queued"),
            duplicate=outcomes.count("duplicate"),
            side_effects=runs,
            max_latency_s=load.result.max_latency(),
        )
        assert load.result.statuses() == {"202": COPIES}
        assert outcomes.count("queued") == 1 and outcomes.count("duplicate") == COPIES - 1
        assert handled and runs == 1
