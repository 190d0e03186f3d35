"""Logs name identifiers, never secrets, tokens, signatures or memory text.

The whole flow runs with DEBUG logging everywhere (ours, dramatiq's, uvicorn's
access log): good and bad requests, sync, async and failing handlers.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
from conftest import cli_env, free_port, output, wait_for_port
from starlette.testclient import TestClient

from mem0_receiver import Receiver
from mem0_receiver.brokers import failure_store
from mem0_receiver.testing import Signer, make_body
from mem0_receiver.verify import new_secret

MEMORIES = ["Alex is allergic to peanuts", "Sam's PIN is 4931", "Ana lives at 12 Elm St"]

APP = """
from mem0_receiver import Receiver

receiver = Receiver(verify=["token", "hmac", "standard"])


@receiver.on("memory_add")
def remember(event):
    pass


@receiver.on("*")
async def audit(event):
    pass


@receiver.on("memory_update", max_retries=1, min_backoff=10, max_backoff=20)
def broken(event):
    raise RuntimeError("downstream refused the write")
"""


def _bodies() -> list[bytes]:
    return [
        make_body("memory_add", memory_id="m1", memory=MEMORIES[0]),
        make_body("memory_update", memory_id="m2", memory=MEMORIES[1]),
        make_body("memory_add", shape="flat", memory_id="m3", memory=MEMORIES[2]),
    ]


def _secrets_in(text: str, signer: Signer, extra: list[str]) -> list[str]:
    needles = [*signer.secrets, signer.token(), *MEMORIES, *extra]
    return [needle for needle in needles if needle in text]


def test_in_process_flow_logs_ids_and_outcomes_but_no_secrets_or_memory_text(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = new_secret()
    namespace: dict[str, Any] = {}
    exec(compile(APP, "app.py", "exec"), namespace)
    receiver: Receiver = namespace["receiver"].copy(secrets=[secret], broker=redis_url)
    signer = Signer([secret])
    signatures = []
    worker = dramatiq.Worker(receiver.broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        with TestClient(receiver) as client:
            url = receiver.webhook_url("http://testserver/")
            ids = [client.post(url, content=body).json()["delivery_id"] for body in _bodies()]
            client.post(url, content=_bodies()[0])  # a duplicate
            hmac_headers = signer.hmac_headers(_bodies()[1])
            standard = signer.standard_headers(_bodies()[2])
            signatures += [hmac_headers["X-Mem0-Signature"], standard["webhook-signature"]]
            client.post("http://testserver/", content=_bodies()[1], headers=hmac_headers)
            client.post("http://testserver/", content=_bodies()[2], headers=standard)
            client.post(url + "x", content=_bodies()[0])  # a bad token
            bad = {"X-Mem0-Signature": hmac_headers["X-Mem0-Signature"][:-2] + "00"}
            client.post("http://testserver/", content=_bodies()[0], headers=bad)
        store = failure_store(receiver.broker)
        deadline = time.monotonic() + 10
        while store.count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    # What the test's own HTTP client logs is the sender's side, not ours.
    text = "\n".join(
        caplog.handler.format(r) for r in caplog.records if not r.name.startswith("httpx")
    )
    assert store.count() >= 1  # the failing handler ran and gave up
    assert _secrets_in(text, signer, signatures) == []
    for delivery_id, event in zip(ids, ["memory_add", "memory_update", "memory_add"], strict=True):
        assert re.search(
            rf"status=202 delivery={delivery_id} event={event} memory_id=m\d latency_ms=", text
        )
    assert "Rejected an unverified request" in text
    assert "gave up on delivery" in text


def test_serve_and_worker_at_debug_level_keep_secrets_and_memory_text_out_of_their_output(
    tmp_path: Path, redis_url: str, spawn: Any
) -> None:
    (tmp_path / "app.py").write_text(APP)
    secret = new_secret()
    env = cli_env(MEM0_RECEIVER_SECRETS=secret, MEM0_RECEIVER_BROKER_URL=redis_url)
    port = free_port()
    server = spawn(
        "serve", "app:receiver", "--port", str(port), "--log-level", "debug", cwd=tmp_path, env=env
    )
    worker = spawn(
        "worker",
        "app:receiver",
        "--processes",
        "1",
        "--threads",
        "2",
        "--log-level",
        "debug",
        cwd=tmp_path,
        env=env,
    )
    wait_for_port(port, process=server)
    signer = Signer([secret])
    url = f"http://127.0.0.1:{port}/?token={signer.token()}"
    for body in _bodies():
        assert httpx.post(url, content=body).status_code == 202
    assert httpx.post(url + "x", content=_bodies()[0]).status_code == 401
    hmac_headers = signer.hmac_headers(_bodies()[0])
    httpx.post(f"http://127.0.0.1:{port}/", content=_bodies()[0], headers=hmac_headers)
    deadline = time.monotonic() + 15
    while "gave up on delivery" not in output(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    logs = output(server) + output(worker)
    assert "gave up on delivery" in logs
    assert "Received message" in logs  # dramatiq's own DEBUG lines are in there
    assert _secrets_in(logs, signer, [hmac_headers["X-Mem0-Signature"]]) == []
    assert logs.count("status=202 delivery=") >= 3
    assert '"POST /?token=… HTTP/1.1" 202' in logs
