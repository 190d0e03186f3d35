"""What one bench invocation shares: the machine layout, the options, the private Redis."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.loadgen import post_events, start_wrk
from bench.procs import LOOPBACK, BenchError, Proc, ProcessGroup, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent

SERVER_CPU = "0"
LOADGEN_CPU = "1"  # wrk and redis-server


@dataclass
class Args:
    duration: int
    rounds: int
    warmup: int
    concurrency: list[int]
    apps: list[str]
    chart: Path
    json: Path
    same_delivery: bool
    memory: bool
    memory_duration: int
    memory_warmup: int
    workers: bool
    worker_messages: int


@dataclass
class Bench:
    """What one invocation shares: options, the private Redis, env, process bookkeeping."""

    args: Args
    group: ProcessGroup
    redis_proc: Proc
    client: redis.Redis
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    shown_affinity: bool = False

    def wrk(self, name: str, concurrency: int, duration: int, label: str) -> Proc:
        return start_wrk(
            self.group,
            self.env,
            self.urls[name],
            concurrency=concurrency,
            duration=duration,
            cpus=LOADGEN_CPU,
            label=label,
            distinct_deliveries=not self.args.same_delivery,
            cwd=REPO_ROOT,
        )

    def post(self, name: str, count: int) -> None:
        post_events(self.urls[name], count, distinct=not self.args.same_delivery, time_limit=120)


def start_redis(group: ProcessGroup, data_dir: Path) -> tuple[Proc, redis.Redis, str]:
    """A private, non-persistent redis-server on a free port, pinned with the load generator."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", LOOPBACK]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(data_dir)]
    proc = group.spawn("redis", argv, cpus=LOADGEN_CPU, env=dict(os.environ), cwd=data_dir)
    url = f"redis://{LOOPBACK}:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=5)
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                return proc, client, url
        if not proc.alive() or time.monotonic() > deadline:
            raise BenchError(f"private redis-server did not start:\n{proc.log_tail()}")
        time.sleep(0.05)
