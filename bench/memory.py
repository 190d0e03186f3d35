"""With --memory: the server's RSS sampled every second under a sustained load."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.procs import BenchError, reap, rss_mib
from bench.servers import AppSpec, running_server
from bench.session import Bench


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
