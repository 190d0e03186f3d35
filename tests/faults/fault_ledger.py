"""The fault suite's figures, printed and reported; the ledger itself is tests/ledger.py."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from ledger import Ledger

__all__ = ["Ledger", "report", "wait_until"]

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
