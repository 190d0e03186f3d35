"""Subprocess plumbing for bench/run.py: pinned process groups that are always cleaned up."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A run could not be carried out (process died, not ready in time, bad response...)."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    program: str  # resolved path of the program taskset execs

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessGroup:
    """Starts every subprocess in its own session (so its process group id is its pid) and
    kills those groups, and only those, on :meth:`close`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[Proc] = []
        self._spawned = 0

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: str,
        env: dict[str, str],
        cwd: Path,
    ) -> Proc:
        self._spawned += 1
        log_path = self.log_dir / f"{self._spawned:03d}-{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                ["taskset", "-c", cpus, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        program = os.path.realpath(shutil.which(argv[0]) or argv[0])
        proc = Proc(name, popen, log_path, program)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 15.0) -> None:
        """SIGTERM the group (graceful: uvicorn finishes in-flight requests), SIGKILL if needed."""
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.popen.wait(5)
        # Children left behind in the group (e.g. dramatiq worker processes) go too.
        _signal_group(proc.pid, signal.SIGKILL)
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self._procs)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5.0)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def reap(proc: Proc) -> resource.struct_rusage | None:
    """Reap ``proc`` if it has exited and return its CPU usage; None while it still runs.

    Use this (not ``proc.alive()``) for processes whose rusage you want: Popen.poll() would
    reap them and lose it.
    """
    if proc.popen.returncode is not None:
        raise BenchError(f"{proc.name} was already reaped")
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid != proc.pid:
        return None
    proc.popen.returncode = os.waitstatus_to_exitcode(status)
    return usage


def wait_with_rusage(proc: Proc, timeout: float) -> resource.struct_rusage:
    """Wait for ``proc`` (at most ``timeout`` s, then kill it) and return its CPU usage."""
    deadline = time.monotonic() + timeout
    while True:
        usage = reap(proc)
        if usage is not None:
            return usage
        if time.monotonic() > deadline:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.popen.wait(5)
            raise BenchError(f"{proc.name} did not finish within {timeout:.0f}s; killed")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(proc: Proc, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited early:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise BenchError(f"{proc.name} not listening on {LOOPBACK}:{port} after {timeout:.0f}s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def affinity(proc: Proc, timeout: float = 2.0) -> str:
    """The CPUs ``proc`` may run on, read once taskset has exec'd the real program.

    Popen can return before the child has even exec'd taskset, and taskset only sets the
    mask right before it execs the program, so until then the unpinned mask shows.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{proc.pid}/exe") == proc.program:
                break
        time.sleep(0.005)
    return ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(proc.pid)))
