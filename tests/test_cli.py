"""The command line, run as a user runs it: the console script in subprocesses."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RedisServer, cli_env, free_port, mem0_receiver, output, wait_for_port

from mem0_receiver.testing import DOCUMENTED_BODIES, make_body
from mem0_receiver.verify import new_secret

APP = """
import os
from mem0_receiver import Receiver

receiver = Receiver()
LEDGER = os.environ["LEDGER"]


def record(line):
    with open(LEDGER, "a") as ledger:
        ledger.write(line + "\\n")


@receiver.on("memory_add", "memory_update", "memory_delete", "memory_categorize")
def remember(event):
    record(f"remember {event.event_type} {event.memory_id}")


@receiver.on("*")
async def audit(event):
    record(f"audit {event.event_type} {event.memory_id}")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def ledger_lines(project: Path, count: int, timeout: float = 15) -> list[str]:
    path = project / "ledger"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return sorted(lines)
        time.sleep(0.05)
    raise AssertionError(
        f"Expected {count} ledger lines, got {path.read_text() if path.exists() else 'none'}"
    )


def test_serve_and_worker_processes_handle_every_documented_payload_through_redis(
    project: Path, redis_url: str, spawn: Any
) -> None:
    secret = new_secret()
    env = cli_env(
        MEM0_RECEIVER_SECRETS=secret,
        MEM0_RECEIVER_BROKER_URL=redis_url,
        LEDGER=str(project / "ledger"),
    )
    port = free_port()
    server = spawn("serve", "app:receiver", "--port", str(port), cwd=project, env=env)
    worker = spawn(
        "worker", "app:receiver", "--processes", "1", "--threads", "2", cwd=project, env=env
    )
    wait_for_port(port, process=server)
    url = mem0_receiver("url", f"http://127.0.0.1:{port}/", cwd=project, env=env).stdout.strip()
    assert "token=" in url

    bodies = [*DOCUMENTED_BODIES.values(), make_body("memory_update"), make_body("memory_delete")]
    bodies.append(b'{"event": "ingest_job_completed", "id": "job_1", "status": "completed"}')
    bodies.append(b'{"event": "memory_archive", "memory_id": "m9"}')
    for body in bodies:
        response = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 202, response.text
    # Bad input through the real server, too.
    assert httpx.post(url.split("?")[0], content=bodies[0]).status_code == 401
    assert httpx.post(url, content=b"{").status_code == 400
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["status"] == "ok"

    lines = ledger_lines(project, 12)
    assert lines == sorted(
        [
            "audit memory_add a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
            "remember memory_add a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
            "audit memory_categorize a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
            "remember memory_categorize a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
            "audit memory_add mem_456",
            "remember memory_add mem_456",
            "audit memory_update a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
            "remember memory_update a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
            "audit memory_delete a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
            "remember memory_delete a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
            "audit ingest_job_completed None",
            "audit memory_archive m9",
        ]
    )
    server_log = output(server)
    token = url.split("token=")[1]
    assert token not in server_log and secret not in server_log
    assert "Name is Alex" not in server_log
    assert '"POST /?token=… HTTP/1.1" 202' in server_log
    assert worker.poll() is None


def test_dev_runs_receiver_and_worker_in_one_process_and_prints_a_curl_line(
    project: Path, spawn: Any
) -> None:
    env = cli_env(MEM0_RECEIVER_SECRETS=new_secret(), LEDGER=str(project / "ledger"))
    port = free_port()
    dev = spawn("dev", "app:receiver", "--port", str(port), cwd=project, env=env)
    wait_for_port(port, process=dev)
    text = output(dev)
    url = re.search(r"Register this URL with Mem0.*?: (\S+)", text)
    assert url is not None and "token=" in url.group(1)
    assert "curl -sS -X POST" in text
    assert "NOT durable" in text
    response = httpx.post(url.group(1), content=DOCUMENTED_BODIES["memory_add"])
    assert response.status_code == 202
    assert ledger_lines(project, 2) == [
        "audit memory_add a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
        "remember memory_add a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
    ]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["serve", "app"], {}, "TARGET must look like module:attribute"),
        (["serve", "nowhere:receiver"], {}, "Could not import module 'nowhere'"),
        (["serve", "app:missing"], {}, "has no attribute 'missing'"),
        (["serve", "app:LEDGER"], {}, "is a str, not a mem0_receiver.Receiver"),
        (["serve", "app:receiver"], {"MEM0_RECEIVER_SECRETS": ""}, "MEM0_RECEIVER_SECRETS"),
        (["serve", "app:receiver"], {}, "needs a durable broker"),
        (["worker", "app:receiver"], {}, "needs a durable broker"),
        (
            ["serve", "app:receiver"],
            {"MEM0_RECEIVER_BROKER_URL": "kafka://x"},
            "Unsupported broker URL scheme 'kafka'",
        ),
        (
            ["serve", "app:receiver"],
            {"MEM0_RECEIVER_VERIFY": "token,rsa"},
            "Unknown verification scheme 'rsa'",
        ),
        (["url", "ftp://example.com"], {}, "is not an http(s) URL"),
    ],
    ids=[
        "target-shape",
        "no-module",
        "no-attribute",
        "not-a-receiver",
        "no-secret",
        "serve-in-memory",
        "worker-in-memory",
        "bad-broker-url",
        "bad-scheme",
        "bad-base-url",
    ],
)
def test_user_mistakes_end_in_one_line_without_a_traceback(
    project: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    secret = new_secret()
    environ = cli_env(MEM0_RECEIVER_SECRETS=secret, LEDGER="x")
    environ.update(env)
    result = mem0_receiver(*args, cwd=project, env=environ)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("mem0-receiver: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr and secret not in result.stderr


def test_worker_refuses_a_broker_that_does_not_answer(project: Path, make_redis: Any) -> None:
    server: RedisServer = make_redis()
    url = server.url
    server.stop()
    env = cli_env(MEM0_RECEIVER_SECRETS=new_secret(), MEM0_RECEIVER_BROKER_URL=url, LEDGER="x")
    result = mem0_receiver("worker", "app:receiver", cwd=project, env=env)
    assert result.returncode == 2
    assert "does not answer" in result.stderr
    assert "Traceback" not in result.stderr


def test_url_signs_with_the_current_secret_and_secret_makes_new_ones(project: Path) -> None:
    first = mem0_receiver("secret", cwd=project, env=cli_env()).stdout.strip()
    second = mem0_receiver("secret", cwd=project, env=cli_env()).stdout.strip()
    assert first != second and first.startswith("whsec_") and len(first) > 40
    env = cli_env(MEM0_RECEIVER_SECRETS=f"{first},{second}")
    url = mem0_receiver("url", "https://example.com/webhooks/mem0", cwd=project, env=env)
    assert url.returncode == 0
    assert url.stdout.startswith("https://example.com/webhooks/mem0/?token=")
