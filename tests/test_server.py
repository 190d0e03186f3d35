"""The access log never shows the URL's token, whichever way uvicorn is started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import cli_env, free_port, wait_for_port

from mem0_receiver.server import redact_token
from mem0_receiver.testing import DOCUMENTED_BODIES, Signer
from mem0_receiver.verify import new_secret

HOST_APP = """
from starlette.applications import Starlette
from starlette.routing import Mount
from mem0_receiver import Receiver

receiver = Receiver()
receiver.on("*")(lambda event: None)
app = Starlette(routes=[Mount("/webhooks/mem0", app=receiver)], lifespan=receiver.lifespan)
"""


@pytest.mark.parametrize(
    ("path", "redacted"),
    [
        ("/?token=abc.def", "/?token=…"),
        ("/hooks/?team=a&token=abc&x=1", "/hooks/?team=a&token=…&x=1"),
        ("/?tokens=abc", "/?tokens=abc"),
        ("/healthz", "/healthz"),
    ],
    ids=["only-param", "among-others", "other-name", "no-query"],
)
def test_redact_token_blanks_only_the_token(path: str, redacted: str) -> None:
    assert redact_token(path) == redacted


def test_plain_uvicorn_serving_a_host_app_logs_the_mount_without_its_token(
    tmp_path: Path,
) -> None:
    (tmp_path / "host.py").write_text(HOST_APP)
    secret = new_secret()
    port = free_port()
    env = cli_env(MEM0_RECEIVER_SECRETS=secret)
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "host:app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, process=process)  # type: ignore[arg-type]
        token = Signer([secret]).token()
        url = f"http://127.0.0.1:{port}/webhooks/mem0/?token={token}"
        assert httpx.post(url, content=DOCUMENTED_BODIES["memory_add"]).status_code == 202
    finally:
        process.terminate()
        logs, _ = process.communicate(timeout=15)
    assert '"POST /webhooks/mem0/?token=… HTTP/1.1" 202' in logs
    assert token not in logs and secret not in logs
