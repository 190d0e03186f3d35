"""The HTTP measurement: one wrk run against a fresh server, repeated in interleaved rounds."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence

from bench.counting import MessageCount
from bench.loadgen import finish_wrk
from bench.procs import BenchError, Proc, affinity, cpu_seconds
from bench.report import print_run
from bench.results import Delivery, RunResult, Summary
from bench.servers import AppSpec, resolve_url, running_server
from bench.session import Bench


def quiesce(bench: Bench, spec: AppSpec, timeout: float = 10.0) -> MessageCount | None:
    """Wait until the app's message count stops moving (in-flight requests have finished)."""
    if spec.counter is None:
        time.sleep(0.2)
        return None
    deadline = time.monotonic() + timeout
    last, stable = spec.counter(bench.client), 0
    while stable < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = spec.counter(bench.client)
        stable = stable + 1 if now.total == last.total else 0
        last = now
    return last


def show_affinity(bench: Bench, server: Proc, wrk: Proc) -> None:
    if bench.shown_affinity:
        return
    bench.shown_affinity = True
    print(
        f"  observed affinity: uvicorn pid {server.pid} -> CPU {affinity(server)}, "
        f"wrk pid {wrk.pid} -> CPU {affinity(wrk)}, "
        f"redis-server pid {bench.redis_proc.pid} -> CPU {affinity(bench.redis_proc)}"
    )


def run_once(bench: Bench, spec: AppSpec, concurrency: int, rnd: int) -> RunResult:
    """Flush Redis, start the app, warm up, then one measured wrk run against it."""
    args = bench.args
    bench.client.flushall()  # counts are per run
    label = f"{spec.name}-c{concurrency}-r{rnd}"
    with running_server(bench, spec) as server:
        if args.warmup:
            warmup = bench.wrk(spec.name, concurrency, args.warmup, f"warmup-{label}")
            finish_wrk(warmup, args.warmup)
        before = quiesce(bench, spec)
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        wrk = bench.wrk(spec.name, concurrency, args.duration, label)
        show_affinity(bench, server, wrk)
        result = finish_wrk(wrk, args.duration)
        server_cpu = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0) * 100
    # uvicorn has exited gracefully, so every request it accepted has been handled.
    after = spec.counter(bench.client) if spec.counter else None
    delivery = Delivery(
        accepted=result.accepted,
        unanswered=result.unanswered,
        enqueued=after.total - before.total if after and before else None,
        consistent=after.consistent if after else True,
        deduplicated=args.same_delivery and spec.dedupes,
    )
    detail = after.detail if after else {}
    return RunResult(spec.name, concurrency, rnd, result, delivery, server_cpu, detail)


def load_test(bench: Bench, specs: Sequence[AppSpec]) -> list[Summary]:
    """Round 1: every app at every concurrency; round 2: the same again; ..."""
    args = bench.args
    summaries = {(s.name, c): Summary(s.name, c) for c in args.concurrency for s in specs}
    available = []
    for spec in specs:
        try:
            bench.urls[spec.name] = resolve_url(bench, spec)
            available.append(spec)
        except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"  {spec.name}: UNAVAILABLE ({exc})")
            for c in args.concurrency:
                summaries[spec.name, c].problem = f"unavailable: {exc}"
    for rnd in range(1, args.rounds + 1):
        for spec in available:
            for c in args.concurrency:
                summary = summaries[spec.name, c]
                if summary.problem:
                    continue
                try:
                    run = run_once(bench, spec, c, rnd)
                except BenchError as exc:
                    print(f"  [round {rnd}] {spec.name} c={c}: FAILED\n{exc}")
                    summary.problem = f"failed in round {rnd}: {str(exc).splitlines()[0]}"
                    continue
                summary.runs.append(run)
                print_run(run)
    return list(summaries.values())
