"""What the fault suite reads about processes, from /proc (psutil is not a dependency)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (dramatiq's worker processes of a worker command)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; fields follow the last ")".
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state not in ("Z", "X"):
            found.append(int(entry.name))
    return sorted(found)


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"No thread count for pid {pid}.")


def connections_to(pid: int, port: int) -> int:
    """Open TCP sockets of ``pid`` whose remote end is 127.0.0.1:``port``, in any state."""
    remote = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                remote[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and remote.get(target[8:-1]) == port:
                count += 1
    return count


class Sampler(threading.Thread):
    """Samples a process's thread count and its connections to Redis every 50 ms."""

    def __init__(self, pid: int, redis_port: int) -> None:
        super().__init__(name="faults-sampler", daemon=True)
        self.pid = pid
        self.redis_port = redis_port
        self.threads: list[int] = []
        self.connections: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            with contextlib.suppress(OSError, AssertionError):
                self.threads.append(thread_count(self.pid))
                self.connections.append(connections_to(self.pid, self.redis_port))

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.join(5)


def kill_group(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def log_text(process: subprocess.Popen[str]) -> str:
    """A spawned process's output so far, read through a separate file handle.

    (Seeking the handle the child writes through would move the child's offset too.)
    """
    return Path(process.log.name).read_text(errors="replace")  # type: ignore[attr-defined]
