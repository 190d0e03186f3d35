"""Benchmark mem0-receiver against baselines: ``.venv/bin/python -m bench.run [--quick]``.

Every measured run gets a fresh single-worker uvicorn pinned to CPU 0; wrk and a private
redis-server share CPU 1. Apps are interleaved over rounds and the median per app and
concurrency is reported, with a check that every 202 wrk saw is a message in Redis.
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from bench.draining import WorkerResult, measure_workers, print_workers
from bench.loadgen import MEM0_ADD_BODY
from bench.measure import load_test
from bench.memory import MemoryResult, measure_memory, print_memory
from bench.procs import BenchError, ProcessGroup
from bench.report import print_table, write_chart
from bench.servers import APPS
from bench.session import LOADGEN_CPU, REPO_ROOT, SERVER_CPU, Args, Bench, start_redis

RESULTS_DIR = REPO_ROOT / "bench" / "results"


def parse_args(argv: Sequence[str] | None = None) -> Args:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--duration", type=int, help="seconds per measured run (default 10)")
    p.add_argument("--rounds", type=int, help="interleaved rounds; medians reported (default 3)")
    p.add_argument("--warmup", type=int, help="seconds of unmeasured load per run (default 2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    p.add_argument("--apps", nargs="+", choices=list(APPS), default=list(APPS))
    p.add_argument("--chart", type=Path, default=RESULTS_DIR / "chart.png")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "results.json", help="raw results")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 3 s x 2 rounds, 1 s warm-up, 5000 msgs"
    )
    p.add_argument(
        "--same-delivery",
        action="store_true",
        help="send no per-request webhook-id: every request is the same delivery, which "
        "mem0-receiver deduplicates (measures the duplicate path)",
    )
    p.add_argument("--memory", action="store_true", help="also sample server RSS under load")
    p.add_argument("--memory-duration", type=int, default=60, help="seconds (default 60)")
    p.add_argument("--memory-warmup", type=int, default=10, help="seconds before the baseline")
    p.add_argument("--skip-workers", action="store_true", help="skip the worker measurement")
    p.add_argument("--worker-messages", type=int, help="messages drained (default 20000)")
    ns = p.parse_args(argv)

    args = Args(
        duration=ns.duration or (3 if ns.quick else 10),
        rounds=ns.rounds or (2 if ns.quick else 3),
        warmup=ns.warmup if ns.warmup is not None else (1 if ns.quick else 2),
        concurrency=ns.concurrency,
        apps=ns.apps if "empty" in ns.apps else ["empty", *ns.apps],  # ratios need it
        chart=ns.chart,
        json=ns.json,
        same_delivery=ns.same_delivery,
        memory=ns.memory,
        memory_duration=ns.memory_duration,
        memory_warmup=ns.memory_warmup,
        workers=not ns.skip_workers,
        worker_messages=ns.worker_messages or (5000 if ns.quick else 20000),
    )
    if min(args.duration, args.rounds, *args.concurrency, args.worker_messages) < 1:
        p.error("--duration, --rounds, --concurrency and --worker-messages must be >= 1")
    if args.memory_duration <= args.memory_warmup:
        p.error("--memory-duration must be longer than --memory-warmup")
    return args


def check_machine() -> None:
    install = {
        "wrk": "apt-get update && apt-get install -y wrk",
        "redis-server": "apt-get update && apt-get install -y redis-server",
        "taskset": "apt-get update && apt-get install -y util-linux",
    }
    for tool, command in install.items():
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found; install it with: {command}")
    if not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("needs CPUs 0 and 1 (server on CPU 0, wrk + Redis on CPU 1)")


def busy_cpu_pct(seconds: float = 1.0) -> dict[str, float]:
    """CPU use of the whole machine per CPU over ``seconds``, before the bench starts anything."""

    def sample() -> dict[str, list[int]]:
        lines = Path("/proc/stat").read_text().splitlines()
        return {
            f[0]: [int(v) for v in f[1:]]
            for f in (line.split() for line in lines)
            if f[0].startswith("cpu") and f[0] != "cpu"
        }

    first = sample()
    time.sleep(seconds)
    second = sample()
    busy = {}
    for cpu, values in second.items():
        delta = [b - a for a, b in zip(first[cpu], values, strict=True)]
        idle = delta[3] + delta[4]  # idle + iowait
        busy[cpu] = 100 * (1 - idle / max(sum(delta), 1))
    return busy


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_machine()
    signal.signal(signal.SIGTERM, _interrupt)  # so that `finally` also cleans up on kill
    with tempfile.TemporaryDirectory(prefix="mem0-bench-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            return _run(args, group, Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted; stopping every process the bench started", file=sys.stderr)
            return 130
        finally:
            group.close()


def _run(args: Args, group: ProcessGroup, tmp: Path) -> int:
    print("== mem0-receiver benchmark ==")
    print(f"  nproc={os.cpu_count()}  python={sys.version.split()[0]}")
    print(
        f"  pinning: uvicorn -> taskset -c {SERVER_CPU}; "
        f"wrk + redis-server -> taskset -c {LOADGEN_CPU}"
    )
    print("  server: uvicorn --workers 1 --loop uvloop --http httptools --no-access-log")
    print(
        f"  load: wrk -t1, {args.duration}s x {args.rounds} interleaved rounds, "
        f"{args.warmup}s warm-up per run, concurrency {' '.join(map(str, args.concurrency))}"
    )
    print(f"  body: {MEM0_ADD_BODY}")
    busy = busy_cpu_pct()
    print("  machine busy before start: " + ", ".join(f"{k} {v:.0f}%" for k, v in busy.items()))
    if max(busy.values()) > 10:
        print("  WARNING: the machine is not idle; other load makes these numbers noisy")
    print(
        "  deliveries: "
        + ("all identical (--same-delivery)" if args.same_delivery else "unique webhook-id each")
    )
    redis_proc, client, redis_url = start_redis(group, tmp)
    env = {
        **os.environ,
        "BENCH_REDIS_URL": redis_url,
        "BENCH_SECRET": secrets.token_urlsafe(32),
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(BENCH_REDIS_URL=redis_url, BENCH_SECRET=env["BENCH_SECRET"])
    bench = Bench(args, group, redis_proc, client, env)
    print(f"  private redis-server: {redis_url} (--save '' --appendonly no)\n")

    specs = [APPS[name] for name in args.apps]
    summaries = load_test(bench, specs)
    print()
    print_table(summaries)
    write_chart(args.chart, summaries, args)
    print(f"\nchart: {args.chart}")

    memory: list[MemoryResult] = []
    if args.memory:
        concurrency = max(args.concurrency)
        print(f"\n== memory: server RSS during {args.memory_duration}s at c={concurrency} ==")
        for spec in specs:
            if spec.name not in bench.urls:
                print(f"  {spec.name}: unavailable")
                continue
            try:
                memory.append(measure_memory(bench, spec, concurrency))
                print_memory(memory[-1])
            except BenchError as exc:
                print(f"  {spec.name}: FAILED ({exc})")

    workers: list[WorkerResult] = []
    if args.workers:
        print(
            f"\n== workers: drain {args.worker_messages} no-op messages, "
            f"1 process pinned to CPU {SERVER_CPU} =="
        )
        workers = measure_workers(bench, args.worker_messages)
        print_workers(workers)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "args": asdict(args),
        "nproc": os.cpu_count(),
        "summaries": [asdict(s) for s in summaries],
        "memory": [asdict(m) for m in memory],
        "workers": [asdict(w) for w in workers],
    }
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"raw results: {args.json}")
    return 1 if any("MISMATCH" in s.delivery_verdict() for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
