"""`mem0-receiver send`: sample events against a running receiver, once or as a load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_env, free_port, mem0_receiver, wait_for_port

from mem0_receiver.verify import new_secret

APP = """
from mem0_receiver import Receiver
receiver = Receiver(verify=["token", "hmac", "standard"])
receiver.on("*")(lambda event: None)
"""


@pytest.fixture
def server(tmp_path: Path, spawn: Any) -> tuple[str, dict[str, str]]:
    (tmp_path / "app.py").write_text(APP)
    env = cli_env(MEM0_RECEIVER_SECRETS=new_secret())
    port = free_port()
    process = spawn("dev", "app:receiver", "--port", str(port), cwd=tmp_path, env=env)
    wait_for_port(port, process=process)
    return f"http://127.0.0.1:{port}/", env


@pytest.mark.parametrize("scheme", ["token", "hmac", "standard"])
def test_send_signs_with_each_scheme_and_prints_the_response(
    server: tuple[str, dict[str, str]], tmp_path: Path, scheme: str
) -> None:
    url, env = server
    result = mem0_receiver(
        "send",
        url,
        "--scheme",
        scheme,
        "--event",
        "memory_categorize",
        "--categories",
        "travel,food",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r'202 \{"status":"queued","delivery_id":"[^"]+"\}\n', result.stdout)


def test_send_count_is_a_load_generator_with_a_summary(
    server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = server
    result = mem0_receiver(
        "send", url, "--count", "200", "--concurrency", "8", cwd=tmp_path, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    requests, latency, statuses = result.stdout.splitlines()
    assert re.fullmatch(r"requests=200 time=\d+\.\d\ds rate=\d+ req/s", requests)
    assert re.fullmatch(r"latency p50=[\d.]+ms p90=[\d.]+ms p99=[\d.]+ms max=[\d.]+ms", latency)
    assert statuses == "statuses 202=200"


def test_send_exits_non_zero_when_the_receiver_refuses(
    server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, _ = server
    wrong = cli_env(MEM0_RECEIVER_SECRETS=new_secret())
    result = mem0_receiver("send", url, cwd=tmp_path, env=wrong)
    assert result.returncode == 1
    assert result.stdout.startswith("401 ")


def test_send_without_a_secret_says_what_to_set(tmp_path: Path) -> None:
    result = mem0_receiver(
        "send", "http://127.0.0.1:9/", "--scheme", "hmac", cwd=tmp_path, env=cli_env()
    )
    assert result.returncode == 2
    assert "set MEM0_RECEIVER_SECRETS" in result.stderr
