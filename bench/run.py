"""Benchmark mem0-receiver against baselines: ``.venv/bin/python -m bench.run [--quick]``.

Every measured run gets a fresh single-worker uvicorn pinned to CPU 0; wrk and a private
redis-server share CPU 1. Apps are interleaved over rounds and the median per app and
concurrency is reported, with a check that every 202 wrk saw is a message in Redis.
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import redis

from bench.counting import (
    MessageCount,
    count_celery_queue,
    count_dramatiq_messages,
    count_dramatiq_queue,
)
from bench.loadgen import MEM0_ADD_BODY, WrkResult, finish_wrk, post_events, start_wrk
from bench.procs import (
    LOOPBACK,
    BenchError,
    Proc,
    ProcessGroup,
    affinity,
    cpu_seconds,
    free_port,
    reap,
    rss_mib,
    wait_for_port,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"

SERVER_CPU = "0"
LOADGEN_CPU = "1"  # wrk and redis-server


@dataclass(frozen=True)
class AppSpec:
    name: str
    about: str
    #: Counts this app's messages in Redis; None for the empty endpoint, which enqueues nothing.
    counter: Callable[[redis.Redis], MessageCount] | None
    #: Whether the app drops repeated deliveries (matters with --same-delivery).
    dedupes: bool = False

    @property
    def module(self) -> str:
        return f"bench.apps.{self.name}"


APPS: dict[str, AppSpec] = {
    spec.name: spec
    for spec in (
        AppSpec("empty", "empty Starlette endpoint (ceiling)", None),
        AppSpec(
            "naive_dramatiq",
            "Starlette + itsdangerous + pydantic + actor.send() in the async endpoint",
            lambda client: count_dramatiq_queue(client, "default"),
        ),
        AppSpec(
            "fastapi_celery",
            "FastAPI + itsdangerous + pydantic + Celery task.delay()",
            lambda client: count_celery_queue(client, "celery"),
        ),
        AppSpec("receiver", "mem0-receiver", count_dramatiq_messages, dedupes=True),
    )
}


# --------------------------------------------------------------------------- results


@dataclass
class Delivery:
    """202s seen by wrk vs. messages the app left in Redis during the same run."""

    accepted: int
    unanswered: int
    enqueued: int | None  # None: the app has no queue (empty)
    consistent: bool = True
    deduplicated: bool = False  # --same-delivery against an app that drops repeats

    @property
    def extra(self) -> int:
        return 0 if self.enqueued is None else self.enqueued - self.accepted

    @property
    def ok(self) -> bool:
        if self.enqueued is None:
            return True
        if self.deduplicated:
            return self.enqueued <= 1  # the delivery was already enqueued by the preflight
        # Every 202 must be in Redis. Requests wrk wrote but never read the answer to were
        # still handled by the server, so up to `unanswered` more messages are expected.
        return self.consistent and 0 <= self.extra <= self.unanswered

    def verdict(self) -> str:
        if self.enqueued is None:
            return "n/a (no queue)"
        if self.deduplicated:
            outcome = "as expected" if self.ok else "MISMATCH"
            return f"deduplicated {outcome}: {self.enqueued} new for {self.accepted} repeats"
        if not self.consistent:
            return "MISMATCH: queue lists and .msgs hashes differ in size"
        if self.extra < 0:
            return f"MISMATCH: {-self.extra} acknowledged but not in Redis"
        if self.extra > self.unanswered:
            return f"MISMATCH: {self.extra - self.unanswered} more in Redis than requests sent"
        return f"match (+{self.extra} unanswered at cutoff)" if self.extra else "match"


@dataclass
class RunResult:
    app: str
    concurrency: int
    round: int
    wrk: WrkResult
    delivery: Delivery
    server_cpu_pct: float
    redis_keys: dict[str, int] = field(default_factory=dict)


@dataclass
class Summary:
    """All rounds of one app at one concurrency."""

    app: str
    concurrency: int
    runs: list[RunResult] = field(default_factory=list)
    problem: str | None = None  # why the app is unavailable or stopped

    def median(self, value: Callable[[RunResult], float]) -> float:
        return statistics.median(value(run) for run in self.runs)

    @property
    def rps(self) -> float:
        return self.median(lambda r: r.wrk.rps)

    @property
    def spread_pct(self) -> float:
        """Half the range of req/s over the rounds, in % of the median: the run-to-run noise."""
        values = [r.wrk.rps for r in self.runs]
        return (max(values) - min(values)) / 2 / self.rps * 100

    def delivery_verdict(self) -> str:
        bad = [f"round {r.round}: {r.delivery.verdict()}" for r in self.runs if not r.delivery.ok]
        if bad or not self.runs:
            return "; ".join(bad)
        first = self.runs[0].delivery
        if first.enqueued is None:
            return "n/a (no queue)"
        if first.deduplicated:
            return "deduplicated as expected"
        extra = sum(r.delivery.extra for r in self.runs)
        return f"match (+{extra} unanswered at cutoff)" if extra else "match"


# --------------------------------------------------------------------------- one benchmark


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


def resolve_url(bench: Bench, spec: AppSpec) -> str:
    """Import the app in a throwaway process and ask it for its signed URL.

    This is also the availability check: an app that cannot be imported (mem0_receiver not
    written yet, a missing package) raises BenchError carrying the import error.
    """
    port = bench.ports.setdefault(spec.name, free_port())
    code = f"import sys; from {spec.module} import signed_url; print(signed_url(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, f"http://{LOOPBACK}:{port}/"],
        capture_output=True,
        text=True,
        env=bench.env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise BenchError(lines[-1] if lines else f"exit status {proc.returncode}")
    url = proc.stdout.strip().splitlines()[-1]
    if urlsplit(url).hostname != LOOPBACK or urlsplit(url).port != port:
        raise BenchError(f"signed URL {url!r} does not target {LOOPBACK}:{port}")
    return url


@contextlib.contextmanager
def running_server(bench: Bench, spec: AppSpec) -> Iterator[Proc]:
    """A fresh single-worker uvicorn for ``spec`` on the server CPU, checked with one POST.

    Stopped with SIGTERM on exit: uvicorn then finishes every request it has accepted.
    """
    port = bench.ports[spec.name]
    argv = [sys.executable, "-m", "uvicorn", f"{spec.module}:app"]
    argv += ["--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    argv += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    argv += ["--log-level", "warning"]
    proc = bench.group.spawn(
        f"uvicorn-{spec.name}", argv, cpus=SERVER_CPU, env=bench.env, cwd=REPO_ROOT
    )
    try:
        wait_for_port(proc, port)
        # One request first, so a misconfigured app fails loudly instead of answering 4xx.
        bench.post(spec.name, 1)
        yield proc
    finally:
        bench.group.stop(proc)


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


# --------------------------------------------------------------------------- output


def print_run(run: RunResult) -> None:
    w, d = run.wrk, run.delivery
    in_redis = "-" if d.enqueued is None else str(d.enqueued)
    print(
        f"  [round {run.round}] {run.app:<14} c={run.concurrency:<3} {w.rps:7.0f} req/s  "
        f"p50 {w.p50_ms:7.2f} ms  p99 {w.p99_ms:7.2f} ms  errors {w.error_count}  "
        f"202s {d.accepted}  in Redis {in_redis}  unanswered {d.unanswered}  "
        f"server CPU {run.server_cpu_pct:.0f}%  wrk CPU {w.cpu_pct:.0f}%  -> {d.verdict()}"
    )


TABLE_HEADERS = (
    "app", "conc", "req/s", "spread", "vs empty", "p50 ms", "p99 ms", "errors", "202s", "in Redis",
    "unanswered", "srv CPU", "wrk CPU", "enqueued vs acknowledged",
)  # fmt: skip


def table_rows(summaries: Sequence[Summary]) -> list[list[str]]:
    empty = {s.concurrency: s.rps for s in summaries if s.app == "empty" and s.runs}
    rows = []
    for s in summaries:
        if not s.runs:
            rows.append([s.app, str(s.concurrency), *["-"] * 11, s.problem or ""])
            continue
        enqueued = [r.delivery.enqueued for r in s.runs]
        verdict = s.delivery_verdict() + (f"; then {s.problem}" if s.problem else "")
        rows.append(
            [
                s.app,
                str(s.concurrency),
                f"{s.rps:.0f}",
                f"±{s.spread_pct:.0f}%",
                f"{s.rps / empty[s.concurrency]:.2f}" if s.concurrency in empty else "-",
                f"{s.median(lambda r: r.wrk.p50_ms):.2f}",
                f"{s.median(lambda r: r.wrk.p99_ms):.2f}",
                str(sum(r.wrk.error_count for r in s.runs)),
                str(sum(r.delivery.accepted for r in s.runs)),
                "-" if None in enqueued else str(sum(e or 0 for e in enqueued)),
                str(sum(r.delivery.unanswered for r in s.runs)),
                f"{s.median(lambda r: r.server_cpu_pct):.0f}%",
                f"{s.median(lambda r: r.wrk.cpu_pct):.0f}%",
                verdict,
            ]
        )
    return rows


def print_table(summaries: Sequence[Summary]) -> None:
    rows = table_rows(summaries)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(TABLE_HEADERS)]
    header = "  ".join(h.ljust(w) for h, w in zip(TABLE_HEADERS, widths, strict=True))
    print(header.rstrip())
    print("-" * len(header.rstrip()))
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for s in summaries:
        if "MISMATCH" in s.delivery_verdict():
            print(f"!!! MISMATCH {s.app} c={s.concurrency}: {s.delivery_verdict()}")


def write_chart(path: Path, summaries: Sequence[Summary], args: Args) -> None:
    """Grouped bars: req/s relative to the empty endpoint, per app and concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    apps = list(dict.fromkeys(s.app for s in summaries))
    by_key = {(s.app, s.concurrency): s for s in summaries}
    empty = {c: s.rps for (app, c), s in by_key.items() if app == "empty" and s.runs}
    width = 0.8 / len(args.concurrency)
    fig, ax = plt.subplots(figsize=(max(2.2 * len(apps) + 2, 7), 4.8))
    for i, c in enumerate(args.concurrency):
        offset = (i - (len(args.concurrency) - 1) / 2) * width
        xs, ratios, labels = [], [], []
        for x, app in enumerate(apps):
            s = by_key[app, c]
            if s.runs and c in empty:
                xs.append(x + offset)
                ratios.append(s.rps / empty[c])
                labels.append(f"{s.rps / empty[c]:.2f}\n{s.rps:.0f}/s")
        bars = ax.bar(xs, ratios, width, label=f"concurrency {c}")
        ax.bar_label(bars, labels, fontsize=7, padding=2)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(apps)))
    ax.set_xticklabels(
        [app if any(by_key[app, c].runs for c in args.concurrency) else f"{app}\n(n/a)"
         for app in apps]
    )  # fmt: skip
    ax.set_ylabel("req/s relative to the empty endpoint")
    ax.set_ylim(0, 1.3)
    ax.set_title(
        f"Mem0 webhook receivers: median req/s of {args.rounds} x {args.duration}s\n"
        f"uvicorn on CPU {SERVER_CPU}, wrk + Redis on CPU {LOADGEN_CPU} (nproc={os.cpu_count()})",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- memory


@dataclass
class MemoryResult:
    app: str
    concurrency: int
    warmup_s: int
    rss_mib: list[float]

    @property
    def baseline(self) -> float:
        return self.rss_mib[min(self.warmup_s, len(self.rss_mib) - 1)]

    @property
    def growth_pct(self) -> float:
        return (self.rss_mib[-1] - self.baseline) / self.baseline * 100


def measure_memory(bench: Bench, spec: AppSpec, concurrency: int) -> MemoryResult:
    """Server RSS sampled every second during ``--memory-duration`` s of sustained load."""
    seconds = bench.args.memory_duration
    bench.client.flushall()
    samples: list[float] = []
    with running_server(bench, spec) as server:
        wrk = bench.wrk(spec.name, concurrency, seconds, f"memory-{spec.name}")
        deadline = next_sample = time.monotonic()
        deadline += seconds + 30
        while reap(wrk) is None:  # reap(), not poll(): keeps wrk's exit for us
            if time.monotonic() > deadline:
                bench.group.stop(wrk)
                raise BenchError("wrk overran the memory run; killed")
            samples.append(rss_mib(server.pid))
            next_sample += 1.0
            time.sleep(max(next_sample - time.monotonic(), 0))
    return MemoryResult(spec.name, concurrency, bench.args.memory_warmup, samples)


def print_memory(result: MemoryResult) -> None:
    series = " ".join(f"{v:.1f}" for v in result.rss_mib)
    print(f"  {result.app} c={result.concurrency} RSS MiB, one sample per second: {series}")
    print(
        f"  {result.app}: growth after the {result.warmup_s}s warm-up: "
        f"{result.growth_pct:+.1f}% ({result.baseline:.1f} -> {result.rss_mib[-1]:.1f} MiB)"
    )


# --------------------------------------------------------------------------- workers


@dataclass
class WorkerResult:
    name: str
    messages: int
    seconds: float | None
    note: str = ""

    @property
    def rate(self) -> float | None:
        return self.messages / self.seconds if self.seconds else None


def receiver_worker_argv(threads: int) -> list[str] | None:
    """TODO(mem0-receiver worker): the hook for the mem0-receiver side of measure_workers().

    Returns the command that consumes what ``bench.apps.receiver`` enqueues; it is started
    pinned to the server CPU with BENCH_REDIS_URL / BENCH_SECRET in its environment and cwd
    at the repo root. Returning None reports the row as "not wired". Currently wired to
    ``mem0-receiver worker`` as the CLI stood when this was written: re-check the flags if
    the CLI changes.
    """
    try:
        found = importlib.util.find_spec("mem0_receiver.cli") is not None
    except ImportError:
        found = False
    if not found:
        return None
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
    if argv is None:
        return WorkerResult("mem0-receiver", messages, None, "TODO: worker hook not wired")
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


# --------------------------------------------------------------------------- CLI


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
