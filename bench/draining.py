"""The worker side: events/s of one worker process draining a queue of no-op messages."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.counting import count_dramatiq_messages
from bench.loadgen import post_events
from bench.procs import BenchError, Proc
from bench.servers import APPS, resolve_url, running_server
from bench.session import REPO_ROOT, SERVER_CPU, Bench


@dataclass
class WorkerResult:
    name: str
    messages: int
    seconds: float | None
    note: str = ""

    @property
    def rate(self) -> float | None:
        return self.messages / self.seconds if self.seconds else None


def receiver_worker_argv(threads: int) -> list[str]:
    """The command that consumes what ``bench.apps.receiver`` enqueues: ``mem0-receiver worker``.

    It is started pinned to the server CPU with BENCH_REDIS_URL / BENCH_SECRET in its
    environment and cwd at the repo root.
    """
    return [sys.executable, "-m", "mem0_receiver.cli", "worker", "bench.apps.receiver:receiver",
            "--processes", "1", "--threads", str(threads)]  # fmt: skip


def drain(worker: Proc, remaining: Callable[[], int], total: int) -> tuple[int, float]:
    """Time a running worker from its first acknowledged message until none is left.

    Starting the clock at the first ack keeps worker start-up (imports, forks) out of the rate.
    Returns (messages timed, seconds). Bounded: 300 s.
    """
    deadline = time.monotonic() + 300
    start: float | None = None
    start_left = total
    while True:
        left = remaining()
        now = time.monotonic()
        if start is None and left < total:
            start, start_left = now, left
        if left == 0 and start is not None:
            return start_left, now - start
        if not worker.alive():
            raise BenchError(f"{worker.name} exited, {left} messages left:\n{worker.log_tail()}")
        if now > deadline:
            raise BenchError(f"{worker.name}: {left} of {total} messages left after 300s")
        time.sleep(0.002)


def _timed_worker(bench: Bench, name: str, argv: list[str], remaining: Callable[[], int],
                  total: int) -> tuple[int, float]:  # fmt: skip
    worker = bench.group.spawn(name, argv, cpus=SERVER_CPU, env=bench.env, cwd=REPO_ROOT)
    try:
        return drain(worker, remaining, total)
    finally:
        bench.group.stop(worker)


def measure_workers(bench: Bench, messages: int, threads: int = 8) -> list[WorkerResult]:
    """Events/s through plain dramatiq no-op actors vs. through mem0-receiver handlers.

    For each side: enqueue ``messages`` messages while no worker runs, then start one worker
    process with ``threads`` threads pinned to the server CPU and time it until the queue is
    drained (every message acknowledged, i.e. gone from the ``.msgs`` hashes).
    """
    sides = {"plain dramatiq": _measure_plain_dramatiq, "mem0-receiver": _measure_receiver_workers}
    results = []
    for name, measure in sides.items():
        try:
            results.append(measure(bench, messages, threads))
        except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
            results.append(WorkerResult(name, messages, None, f"FAILED: {exc}"))
    return results


def _measure_plain_dramatiq(bench: Bench, messages: int, threads: int) -> WorkerResult:
    bench.client.flushall()
    from bench.workers import plain_dramatiq  # reads BENCH_REDIS_URL at import

    for i in range(messages):
        plain_dramatiq.noop.send(i)
    key = f"dramatiq:{plain_dramatiq.QUEUE_NAME}.msgs"
    argv = [sys.executable, "-m", "dramatiq", "bench.workers.plain_dramatiq"]
    argv += ["--processes", "1", "--threads", str(threads)]
    timed, seconds = _timed_worker(
        bench, "dramatiq-worker", argv, lambda: int(bench.client.hlen(key)), messages
    )
    note = f"dramatiq --processes 1 --threads {threads}, no-op actor"
    return WorkerResult("plain dramatiq", timed, seconds, note)


def _measure_receiver_workers(bench: Bench, messages: int, threads: int) -> WorkerResult:
    argv = receiver_worker_argv(threads)
    spec = APPS["receiver"]
    if spec.name not in bench.urls:
        bench.urls[spec.name] = resolve_url(bench, spec)
    bench.client.flushall()
    # Enqueue through the app itself, so the worker gets exactly what the receiver produces.
    with running_server(bench, spec):
        # The preflight POST was the first; these all carry distinct webhook-ids.
        post_events(bench.urls[spec.name], messages - 1, distinct=True, time_limit=120)
    queued = count_dramatiq_messages(bench.client).total
    if queued != messages:
        raise BenchError(f"expected {messages} receiver messages in Redis, found {queued}")

    hashes = [key for key in count_dramatiq_messages(bench.client).detail if key.endswith(".msgs")]

    def remaining() -> int:
        pipe = bench.client.pipeline(transaction=False)
        for key in hashes:
            pipe.hlen(key)
        return sum(int(n) for n in pipe.execute())

    timed, seconds = _timed_worker(bench, "receiver-worker", argv, remaining, messages)
    note = f"mem0-receiver worker --processes 1 --threads {threads}, no-op handler"
    return WorkerResult("mem0-receiver", timed, seconds, note)


def print_workers(results: Sequence[WorkerResult]) -> None:
    for r in results:
        if r.rate is None:
            print(f"  {r.name:<15} {'-':>8}  {r.note}")
        else:
            print(
                f"  {r.name:<15} {r.rate:8.0f} events/s  "
                f"({r.messages} messages in {r.seconds:.2f}s; {r.note})"
            )
