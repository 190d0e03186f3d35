"""A receiver made of real processes: ``serve`` and supervised ``worker`` commands.

The system under test runs as a user runs it: ``mem0-receiver serve`` and
``mem0-receiver worker`` subprocesses (the ``spawn`` fixture of tests/conftest.py)
against a redis-server of the test's own (``make_redis``), with an app module
written to the test's directory whose handlers write the ledger (fault_ledger.py).

These helpers are plain modules, not a conftest: tests/ has no ``__init__.py``,
so a second ``conftest.py`` here would be imported under the same name as
tests/conftest.py and shadow it for the ``from conftest import ...`` of every
other test module.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from conftest import RedisServer, cli_env, free_port, wait_for_port
from fault_ledger import Ledger, wait_until
from fault_procs import children, kill_group, log_text
from ledger import RECORD_SOURCE

from mem0_receiver import Receiver
from mem0_receiver.verify import new_secret

#: The module every fault test writes to its tmp_path, before its own handlers.
APP_PREAMBLE = (
    '''\
"""A fault-suite app: its handlers record each side effect in a ledger outside Redis."""

import os
import time

from mem0_receiver import Receiver

FLAG = os.environ.get("FAULTS_FLAG", "")
'''
    + RECORD_SOURCE
    + """

"""
)


class Stack:
    """A ``serve`` process and supervised ``worker`` commands of one app, on ``redis``.

    Worker commands that exit are started again, as systemd's ``Restart=always``
    would: dramatiq's main process shuts down when one of its worker processes
    dies (dramatiq/cli.py), and that is how kill -9 and ``os._exit`` end.
    """

    def __init__(
        self,
        tmp_path: Path,
        spawn: Callable[..., subprocess.Popen[str]],
        redis: RedisServer,
        *,
        handlers: str,
        receiver_kwargs: str = "",
    ) -> None:
        self.spawn = spawn
        self.redis = redis
        self.project = tmp_path / "project"
        self.project.mkdir()
        app = APP_PREAMBLE + f"receiver = Receiver({receiver_kwargs})\n\n\n" + handlers
        (self.project / "faultapp.py").write_text(app)
        self.ledger = Ledger(tmp_path / "ledger")
        self.flag = tmp_path / "flag"
        self.secret = new_secret()
        self.env = cli_env(
            MEM0_RECEIVER_SECRETS=self.secret,
            MEM0_RECEIVER_BROKER_URL=redis.url,
            LEDGER_DIR=str(self.ledger.directory),
            FAULTS_FLAG=str(self.flag),
        )
        self.server: subprocess.Popen[str] | None = None
        self.port = 0
        self.started: list[subprocess.Popen[str]] = []
        self.workers: list[subprocess.Popen[str]] = []
        self.worker_threads = 4
        self.restarts = 0
        self._supervised = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    def _start(self, *args: str) -> subprocess.Popen[str]:
        process = self.spawn(*args, cwd=self.project, env=self.env)
        self.started.append(process)
        return process

    def serve(self) -> str:
        """Start ``mem0-receiver serve``; return the signed URL once it answers."""
        self.port = free_port()
        self.server = self._start("serve", "faultapp:receiver", "--port", str(self.port))
        wait_for_port(self.port, timeout=30, process=self.server)
        url = Receiver(secrets=[self.secret], environ={}).webhook_url(
            f"http://127.0.0.1:{self.port}/"
        )
        return url

    def start(self, *, workers: int, threads: int = 4) -> str:
        """``serve``, then ``workers`` worker commands, all ready; the signed URL."""
        url = self.serve()
        self.start_workers(workers, threads=threads)
        self.wait_workers_ready()
        return url

    def start_workers(self, count: int, *, threads: int = 4) -> None:
        """Start ``count`` worker commands of one process each, and keep them running."""
        self.worker_threads = threads
        with self._lock:
            self.workers = [self._start_worker() for _ in range(count)]
        self._supervised.set()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def _start_worker(self) -> subprocess.Popen[str]:
        return self._start(
            "worker",
            "faultapp:receiver",
            "--processes",
            "1",
            "--threads",
            str(self.worker_threads),
        )

    def _supervise(self) -> None:
        while self._supervised.wait(0.1):
            time.sleep(0.1)
            with self._lock:
                if not self._supervised.is_set():
                    return
                for index, process in enumerate(self.workers):
                    if process.poll() is not None:
                        kill_group(process)  # a worker process the main one left behind
                        self.workers[index] = self._start_worker()
                        self.restarts += 1

    def wait_workers_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            with self._lock:
                workers = list(self.workers)
            return all("ready for action" in log_text(process) for process in workers)

        if not wait_until(ready, timeout, interval=0.1):
            raise AssertionError("The workers did not start:\n" + self.logs())

    def worker_processes(self, slot: int) -> list[int]:
        """The dramatiq worker processes of the command in ``slot``, once they consume.

        (Before that they hold no message, and one killed while it boots leaves its
        command waiting 30 s, dramatiq's --worker-fork-timeout, before it exits.)
        """
        with self._lock:
            process = self.workers[slot]
            if "ready for action" not in log_text(process):
                return []
            return children(process.pid)

    def crash_workers(self) -> None:
        """Kill every worker command (SIGKILL); the supervisor starts them again."""
        with self._lock:
            for process in self.workers:
                kill_group(process)

    def close(self) -> None:
        """Kill every process group this stack started (the spawn fixture only reaps)."""
        self._supervised.clear()
        if self._supervisor is not None:
            self._supervisor.join(5)
        for process in self.started:
            kill_group(process)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def logs(self, tail: int = 40) -> str:
        parts = []
        for process in self.started:
            lines = log_text(process).splitlines()[-tail:]
            parts.append(f"--- {' '.join(map(str, process.args[1:3]))} pid {process.pid}")
            parts.extend(lines)
        return "\n".join(parts)
