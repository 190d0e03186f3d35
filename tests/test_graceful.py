"""Stopping ``serve`` and ``worker`` with SIGTERM, and what both print when they start.

An operator stops a process with ``kill PID`` (SIGTERM to the main process), as
Docker and Kubernetes do, and systemd with ``KillMode=mixed``. ``serve`` is
uvicorn: it stops listening, finishes the requests it is answering, runs the
lifespan shutdown and exits. ``worker`` is dramatiq's command line: its main
process forwards the signal to its worker processes (dramatiq/cli.py), which
finish the messages they are running and put back the ones they had fetched
but not started (``Worker.stop``), so nothing it held is lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import RedisServer, cli_env, free_port, wait_for_port
from ledger import RECORD_SOURCE, Ledger

from mem0_receiver import Receiver
from mem0_receiver.brokers import redact
from mem0_receiver.testing import make_body
from mem0_receiver.verify import new_secret

APP = (
    """
import os
import time

from mem0_receiver import Receiver

receiver = Receiver()
SECONDS = float(os.environ.get("GRACEFUL_HANDLER_SECONDS", "0"))
"""
    + RECORD_SOURCE
    + """

@receiver.on("memory_add", queue_name="graceful")
def slow(event):
    record("start", event)
    time.sleep(SECONDS)
    record("done", event)
"""
)

Spawn = Callable[..., subprocess.Popen[str]]


@dataclass
class Project:
    """The app in a directory, its environment, and the processes started for it."""

    directory: Path
    env: dict[str, str]
    spawn: Spawn
    ledger: Ledger
    secret: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        process = self.spawn(*args, cwd=self.directory, env={**self.env, **env})
        self.processes.append(process)
        return process

    def serve(self) -> tuple[subprocess.Popen[str], int]:
        port = free_port()
        server = self.start("serve", "graceful:receiver", "--port", str(port))
        wait_for_port(port, timeout=30, process=server)
        return server, port

    def worker(self, *, threads: int, handler_seconds: float) -> subprocess.Popen[str]:
        worker = self.start(
            "worker",
            "graceful:receiver",
            "--processes",
            "1",
            "--threads",
            str(threads),
            GRACEFUL_HANDLER_SECONDS=str(handler_seconds),
        )
        wait_for(lambda: "ready for action" in log_text(worker), 30, worker)
        return worker

    def url(self, port: int) -> str:
        return Receiver(secrets=[self.secret], environ={}).webhook_url(f"http://127.0.0.1:{port}/")

    def stop_all(self) -> None:
        """SIGTERM to each main process; the group is killed if it lingers."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                kill_group(process)


def log_text(process: subprocess.Popen[str]) -> str:
    """A spawned process's output, read by path: seeking the handle the process
    writes through would move its offset too."""
    return Path(process.log.name).read_text(errors="replace")  # type: ignore[attr-defined]


def kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


def wait_for(
    predicate: Callable[[], bool], timeout: float, process: subprocess.Popen[str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log = log_text(process) if process is not None else ""
            raise AssertionError(f"The condition did not hold within {timeout}s.\n{log}")
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                if int(ppid) == pid and state not in ("Z", "X"):
                    found.append(int(entry.name))
    return found


@pytest.fixture
def project(tmp_path: Path, spawn: Spawn, broker_url: tuple[str, str | None]) -> Iterator[Project]:
    url, state_url = broker_url
    if state_url is not None:
        # RabbitMQ keeps queues across runs: start from an empty one.
        flusher = Receiver(secrets=[new_secret()], broker=url, state_url=state_url, environ={})
        flusher.broker.declare_queue("graceful")
        flusher.broker.flush_all()
        flusher.broker.close()
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "graceful.py").write_text(APP)
    secret = new_secret()
    env = cli_env(MEM0_RECEIVER_SECRETS=secret, MEM0_RECEIVER_BROKER_URL=url)
    if state_url is not None:
        env["MEM0_RECEIVER_STATE_URL"] = state_url
    ledger = Ledger(tmp_path / "ledger")
    env["LEDGER_DIR"] = str(ledger.directory)
    project = Project(directory, env, spawn, ledger, secret)
    yield project
    project.stop_all()


@dataclass
class Posts:
    """Answers to a load of POSTs, one unique event each, by memory id."""

    answered: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def post_until(url: str, prefix: str, stopped: threading.Event, posts: Posts) -> None:
    """POST unique events on one keep-alive connection at a time until ``stopped``."""
    with httpx.Client(timeout=10) as client:
        index = 0
        while not stopped.is_set():
            memory_id = f"{prefix}-{index:05d}"
            index += 1
            try:
                response = client.post(
                    url,
                    content=make_body("memory_add", memory_id=memory_id),
                    headers={"Content-Type": "application/json"},
                )
            except httpx.HTTPError as exc:
                with posts.lock:
                    posts.failed[memory_id] = f"{type(exc).__name__}: {exc}"
                time.sleep(0.01)
                continue
            with posts.lock:
                posts.answered[memory_id] = response.status_code


def test_sigterm_to_serve_under_load_answers_every_request_it_took_and_exits(
    project: Project, broker_url: tuple[str, str | None]
) -> None:
    server, port = project.serve()
    url = project.url(port)
    posts = Posts()
    stopped = threading.Event()
    senders = [
        threading.Thread(target=post_until, args=(url, f"load{n}", stopped, posts), daemon=True)
        for n in range(6)
    ]
    for sender in senders:
        sender.start()
    # A request in flight for sure: headers and half its body now, the rest after SIGTERM.
    body = make_body("memory_add", memory_id="in-flight")
    path = url.split(str(port), 1)[1]
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    wait_for(lambda: len(posts.answered) >= 200, 30, server)

    server.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    with posts.lock:
        answered_before = len(posts.answered)
    time.sleep(0.5)
    refused_while_finishing = _connection_refused(port)
    slow.sendall(body[10:])
    in_flight_answer = _read_response(slow)
    slow.close()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve ignored SIGTERM:\n{log_text(server)}") from None
    exit_seconds = time.monotonic() - signalled
    time.sleep(0.3)  # the senders see the closed port
    stopped.set()
    for sender in senders:
        sender.join(15)

    # Every event answered 202 must be in the broker: a worker started now handles it.
    accepted = sorted(m for m, status in posts.answered.items() if status == 202)
    accepted.append("in-flight")
    project.worker(threads=4, handler_seconds=0)
    wait_for(lambda: not set(accepted) - set(project.ledger.counts("done")), 30)
    time.sleep(1)  # an unanswered event that was enqueued anyway would show up by now
    done = project.ledger.counts("done")
    failures = Counter(posts.failed.values())
    log = log_text(server)
    print(
        f"\n[graceful] serve broker={'redis' if broker_url[1] is None else 'rabbitmq'} "
        f"posted={len(posts.answered) + len(posts.failed)} "
        f"answered={dict(Counter(posts.answered.values()))} "
        f"answered_before_sigterm={answered_before} failed={dict(failures)} "
        f"failed_but_enqueued={sum(1 for m in posts.failed if done[m])} "
        f"in_flight_answer={in_flight_answer.splitlines()[0]!r} "
        f"exit_s={exit_seconds:.2f} returncode={server.returncode}",
        flush=True,
    )
    assert set(posts.answered.values()) == {202}, Counter(posts.answered.values())
    # Requests fail only before the server took them: refused once it stopped listening,
    # or sent on a kept-alive connection just as the server closed it (it closes idle
    # connections at shutdown). None of them was enqueued, so none was answered and
    # lost: the sender retries them, as after any network error.
    kinds = {failure.split(":")[0] for failure in failures}
    assert kinds <= {"ConnectError", "ReadError", "RemoteProtocolError"}, failures
    assert not [m for m in posts.failed if done[m]], failures
    assert refused_while_finishing, "serve still accepted connections after SIGTERM"
    assert in_flight_answer.startswith("HTTP/1.1 202 "), in_flight_answer
    assert '"status":"queued"' in in_flight_answer
    # uvicorn re-raises the SIGTERM it caught once it has shut down gracefully
    # (uvicorn/server.py, Server.capture_signals), so the status is "terminated by SIGTERM",
    # as for any process stopped with kill; 0 with older uvicorn.
    assert server.returncode in (0, -signal.SIGTERM), server.returncode
    assert exit_seconds < 5
    assert "Application shutdown complete." in log and "Traceback" not in log
    assert all(done[m] == 1 for m in accepted)


def _connection_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _read_response(sock: socket.socket) -> str:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


EVENTS = 12
THREADS = 3
HANDLER_SECONDS = 2.0


def test_sigterm_to_worker_finishes_or_returns_the_messages_it_holds(
    project: Project, broker_url: tuple[str, str | None]
) -> None:
    _, port = project.serve()
    url = project.url(port)
    ids = [f"held-{n:02d}" for n in range(EVENTS)]
    for memory_id in ids:
        response = httpx.post(url, content=make_body("memory_add", memory_id=memory_id))
        assert response.status_code == 202, response.text
    first = project.worker(threads=THREADS, handler_seconds=HANDLER_SECONDS)
    (first_child,) = children(first.pid)
    wait_for(lambda: sum(project.ledger.counts("start").values()) >= THREADS, 30, first)

    # As `kill PID` does: the main process only; dramatiq forwards it to its worker process.
    first.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    running = {m for kind, m, _ in project.ledger.lines() if kind == "start"}
    running -= {m for kind, m, _ in project.ledger.lines() if kind == "done"}
    try:
        first.wait(HANDLER_SECONDS + 10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"The worker ignored SIGTERM:\n{log_text(first)}") from None
    exit_seconds = time.monotonic() - signalled
    by_first = Counter(m for kind, m, pid in project.ledger.lines() if pid == first_child)

    second = project.worker(threads=THREADS, handler_seconds=0)
    wait_for(lambda: len(project.ledger.counts("done")) == EVENTS, 30, second)
    time.sleep(0.5)  # room for a wrong second run to show up
    starts, done = project.ledger.counts("start"), project.ledger.counts("done")
    by_second = {
        m for kind, m, pid in project.ledger.lines() if kind == "done" and pid != first_child
    }
    print(
        f"\n[graceful] worker broker={'redis' if broker_url[1] is None else 'rabbitmq'} "
        f"events={EVENTS} running_at_sigterm={len(running)} "
        f"finished_by_first={sum(1 for m in ids if by_first[m] == 2)} "
        f"handled_by_second={len(by_second)} exit_s={exit_seconds:.2f} "
        f"returncode={first.returncode} lost={EVENTS - len(done)} "
        f"ran_twice={sum(1 for m in ids if starts[m] > 1)}",
        flush=True,
    )
    log = log_text(first)
    assert first.returncode == 0, log
    assert "Worker has been shut down." in log and "Killing worker process" not in log
    assert running, "No handler was running when SIGTERM came."
    # What ran when SIGTERM came was finished by the worker that had it...
    assert all(by_first[m] == 2 for m in running), (running, by_first)
    assert exit_seconds < HANDLER_SECONDS + 5
    # ...and what it had fetched but not started went back to the queue, for the next one.
    assert sorted(done) == ids and set(done.values()) == {1}
    assert set(starts.values()) == {1}, starts
    assert by_second == set(ids) - set(by_first)


@pytest.mark.parametrize(
    ("command", "broker", "appendonly"),
    [
        ("serve", "redis", False),
        ("worker", "redis", False),
        ("serve", "redis", True),
        ("worker", "redis", True),
        ("serve", "rabbitmq", False),
        ("worker", "rabbitmq", False),
    ],
    ids=[
        "serve-redis-appendonly-no",
        "worker-redis-appendonly-no",
        "serve-redis-appendonly-yes",
        "worker-redis-appendonly-yes",
        "serve-rabbitmq-state-appendonly-no",
        "worker-rabbitmq-state-appendonly-no",
    ],
)
def test_serve_and_worker_announce_broker_queues_verification_and_durability_at_start(
    tmp_path: Path,
    spawn: Spawn,
    make_redis: Callable[..., RedisServer],
    request: pytest.FixtureRequest,
    command: str,
    broker: str,
    appendonly: bool,
) -> None:
    redis = make_redis(appendonly=appendonly)
    (tmp_path / "graceful.py").write_text(APP)
    env = cli_env(
        MEM0_RECEIVER_SECRETS=new_secret(),
        MEM0_RECEIVER_VERIFY="token,hmac",
        LEDGER_DIR=str(tmp_path),
    )
    if broker == "redis":
        env["MEM0_RECEIVER_BROKER_URL"] = redis.url
    else:
        env["MEM0_RECEIVER_BROKER_URL"] = request.getfixturevalue("rabbitmq_url")
        env["MEM0_RECEIVER_STATE_URL"] = redis.url
    args = ["--port", str(free_port())] if command == "serve" else ["--processes", "1"]
    process = spawn(command, "graceful:receiver", *args, cwd=tmp_path, env=env)
    ready = "Application startup complete." if command == "serve" else "ready for action"
    try:
        wait_for(lambda: ready in log_text(process), 30, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            kill_group(process)
    log = log_text(process)

    announced = [line for line in log.splitlines() if "broker=" in line]
    shown = redact(env["MEM0_RECEIVER_BROKER_URL"])
    expected = f"mem0-receiver: broker={shown} queues=graceful verify=token,hmac handlers=1"
    assert len(announced) == 1, log
    assert announced[0].endswith(expected), announced
    assert "guest:guest" not in log and env["MEM0_RECEIVER_SECRETS"] not in log
    warnings = [line for line in log.splitlines() if "appendonly=no" in line]
    if appendonly:
        assert not warnings, warnings
    else:
        (warning,) = warnings
        assert "WARNING" in warning and "CONFIG SET appendonly yes" in warning
        # Said at start, before the process takes any work.
        assert log.index(warning) < log.index(ready)


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_sigterm_to_the_whole_worker_process_group_stops_it(project: Project) -> None:
    # systemd's default KillMode=control-group, `kill -TERM -PGID` and supervisord's
    # stopasgroup send SIGTERM to every process, and dramatiq's main process forwards its
    # own: the worker process gets two. When it handled the first before the second
    # arrived (they merge when both are pending), it used to hang (see
    # brokers.DaemonAsyncIO). This sends them in that order.
    _, port = project.serve()
    url = project.url(port)
    for n in range(6):
        response = httpx.post(url, content=make_body("memory_add", memory_id=f"group-{n}"))
        assert response.status_code == 202, response.text
    worker = project.worker(threads=2, handler_seconds=HANDLER_SECONDS)
    (child,) = children(worker.pid)
    wait_for(lambda: sum(project.ledger.counts("start").values()) >= 2, 30, worker)
    try:
        os.kill(child, signal.SIGTERM)
        wait_for(lambda: "Stopping worker process" in log_text(worker), 5, worker)
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(HANDLER_SECONDS + 8)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"The worker hangs:\n{log_text(worker)}") from None
    finally:
        kill_group(worker)
    # What the killed process held comes back to the next worker (once its
    # heartbeat is older than the timeout): nothing is lost.
    second = project.worker(threads=2, handler_seconds=0)
    try:
        wait_for(lambda: len(project.ledger.counts("done")) == 6, 40, second)
    finally:
        kill_group(second)
