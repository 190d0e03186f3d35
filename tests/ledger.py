"""A ledger that test handlers write outside the system under test.

Handlers in a test app append one line per side effect, ``kind memory_id pid``,
to a file of their own process, with one unbuffered ``O_APPEND`` write: a line
is in the kernel once ``os.write`` returns, so the ledger survives ``kill -9``
of a worker and of Redis alike. The fault suite and the graceful-shutdown
tests both read it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

#: Paste into a test app's source: ``record(kind, event)`` writes one line to
#: the directory named by the environment variable ``LEDGER_DIR``.
RECORD_SOURCE = """
def record(kind, event):
    # One unbuffered O_APPEND write to this process's own file: it is in the
    # kernel once os.write returns, whatever happens to the process or to Redis.
    path = os.path.join(os.environ["LEDGER_DIR"], f"{os.getpid()}.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind} {event.memory_id} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
"""


class Ledger:
    """The side effects the handlers recorded, from every process's file."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.directory = directory

    def lines(self) -> list[tuple[str, str, int]]:
        entries = []
        for path in sorted(self.directory.glob("*.log")):
            for line in path.read_text().splitlines(keepends=True):
                if line.endswith("\n"):  # a line is complete once its newline is written
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
        deadline = started + timeout
        while self.missing(kind, wanted):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)
        return time.monotonic() - started
