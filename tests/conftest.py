"""Shared fixtures: private Redis servers, free ports, and subprocess helpers.

Tests never touch a Redis they did not start: each session runs its own
redis-server on a free port, and tests that freeze or kill Redis start one more.
A missing redis-server binary fails the tests with the command that installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

# The mem0ai client reports usage to PostHog unless this is set before it is
# first imported (mem0/memory/telemetry.py); tests reach nothing but 127.0.0.1.
os.environ.setdefault("MEM0_TELEMETRY", "false")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until ``predicate()`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("The condition did not hold in time.")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, *, timeout: float = 10.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"The process exited with {process.returncode} before listening.")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"Nothing listens on 127.0.0.1:{port} after {timeout}s.")


class RedisServer:
    """A redis-server process of our own."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "These tests need redis-server on PATH: apt-get install redis-server "
                "(Debian/Ubuntu) or brew install redis (macOS).",
                pytrace=False,
            )
        self.port = free_port()
        self.directory = directory
        self.args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--dir",
            str(directory),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        wait_for_port(self.port, process=self.process)
        deadline = time.monotonic() + 10
        while True:  # The port opens before Redis has loaded its data.
            try:
                self.client().ping()
                return
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start extra Redis servers that a test may freeze or kill."""
    servers: list[RedisServer] = []

    def start(**kwargs: bool) -> RedisServer:
        directory = tmp_path / f"redis{len(servers)}"
        directory.mkdir()
        servers.append(RedisServer(directory, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop(signal.SIGKILL)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEM0_RECEIVER_")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def mem0_receiver(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the console script to completion."""
    return subprocess.run(
        [str(BIN / "mem0-receiver"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start long-running commands (serve, worker, dev); all are stopped after the test."""
    processes: list[subprocess.Popen[str]] = []

    def start(
        *args: str, cwd: Path, env: dict[str, str], program: str = "mem0-receiver"
    ) -> subprocess.Popen[str]:
        log = open(tmp_path / f"process{len(processes)}.log", "w+")
        process = subprocess.Popen(
            [str(BIN / program), *args],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        process.log = log  # type: ignore[attr-defined]
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()  # as an operator would; the command stops its children
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything the command left behind
        process.log.close()  # type: ignore[attr-defined]


def output(process: subprocess.Popen[str]) -> str:
    process.log.flush()  # type: ignore[attr-defined]
    process.log.seek(0)  # type: ignore[attr-defined]
    text: str = process.log.read()  # type: ignore[attr-defined]
    return text


RABBITMQ_URL = os.environ.get(
    "MEM0_RECEIVER_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"
)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The machine's RabbitMQ (CI and dev machines run one on 127.0.0.1:5672)."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        pytest.fail(
            "These tests need RabbitMQ on 127.0.0.1:5672 (guest/guest): apt-get install "
            "rabbitmq-server, then rabbitmq-server -detached.",
            pytrace=False,
        )
    return RABBITMQ_URL


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, redis_url: str) -> tuple[str, str | None]:
    """Each production broker in turn: (broker URL, state URL)."""
    if request.param == "redis":
        return redis_url, None
    return request.getfixturevalue("rabbitmq_url"), redis_url


def start_worker(broker: Any, **kwargs: Any) -> Any:
    """A real dramatiq worker, on queues emptied of what earlier tests left (RabbitMQ
    keeps them)."""
    import dramatiq

    broker.flush_all()
    worker = dramatiq.Worker(broker, **kwargs)
    worker.start()
    return worker


def stop_worker(worker: Any) -> None:
    """Stop a worker and close its broker's connections (RabbitMQ keeps one per thread)."""
    worker.stop()
    worker.broker.close()


class Samples:
    """Prometheus exposition text, parsed by prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.text = text
        self.values = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float | None:
        """The sample's value, or None when there is no such sample."""
        return self.values.get((name, frozenset(labels.items())))

    def names(self) -> set[str]:
        return {name for name, _ in self.values}
