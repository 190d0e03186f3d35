"""No-op dramatiq actor, the worker-side baseline (`dramatiq bench.workers.plain_dramatiq`)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.apps._common import require_env

QUEUE_NAME = "bench_worker"

broker = RedisBroker(url=require_env("BENCH_REDIS_URL"))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE_NAME, max_retries=0)
def noop(n: int) -> None:
    """Does nothing; measures dramatiq's own per-message cost."""
