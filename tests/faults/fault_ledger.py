"""The ledger the fault-suite handlers write outside the system, and the figures printed.

Handlers append one line per side effect, ``kind memory_id pid``, to a file of
their own process in the ledger directory, with one unbuffered ``O_APPEND``
write: a line is in the kernel once ``os.write`` returns, so the ledger
survives kill -9 of a worker and of Redis alike.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPORT_ENV = "MEM0_FAULTS_REPORT"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def report(scenario: str, **figures: Any) -> None:
    """Print the scenario's figures and append them as a JSON line to $MEM0_FAULTS_REPORT."""
    shown = " ".join(f"{key}={_show(value)}" for key, value in figures.items())
    print(f"\n[faults] {scenario}: {shown}", flush=True)
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"scenario": scenario, **figures}, sort_keys=False) + "\n")


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class Ledger:
    """The side effects the handlers recorded: ``kind memory_id pid`` per line."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.directory = directory

    def lines(self) -> list[tuple[str, str, int]]:
        entries = []
        for path in sorted(self.directory.glob("*.log")):
            text = path.read_text()
            # A line is complete once its newline is written (one write each).
            for line in text.splitlines(keepends=True):
                if line.endswith("\n"):
                    kind, memory_id, pid = line.split()
                    entries.append((kind, memory_id, int(pid)))
        return entries

    def counts(self, kind: str) -> Counter[str]:
        return Counter(memory_id for k, memory_id, _ in self.lines() if k == kind)

    def missing(self, kind: str, memory_ids: Iterable[str]) -> list[str]:
        seen = self.counts(kind)
        return sorted(memory_id for memory_id in memory_ids if not seen[memory_id])

    def wait_for(self, kind: str, memory_ids: Iterable[str], timeout: float) -> float | None:
        """Seconds until every id has a ``kind`` line, or None if some are still missing."""
        wanted = list(memory_ids)
        started = time.monotonic()
        if wait_until(lambda: not self.missing(kind, wanted), timeout, interval=0.1):
            return time.monotonic() - started
        return None
