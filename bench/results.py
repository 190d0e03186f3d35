"""What the HTTP runs measured: one run, the delivery check, and all rounds of one app."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.loadgen import WrkResult


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
