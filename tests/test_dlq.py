"""Dead letters: `mem0-receiver dlq` lists, replays and purges the failure store in Redis."""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from conftest import BIN, cli_env, mem0_receiver, wait_until
from starlette.testclient import TestClient

from mem0_receiver import Receiver
from mem0_receiver.brokers import failure_store
from mem0_receiver.testing import make_body
from mem0_receiver.verify import new_secret

APP = """
from pathlib import Path
from mem0_receiver import Receiver

HERE = Path(__file__).parent
receiver = Receiver()


@receiver.on("memory_delete", max_retries=0)
def forget(event):
    if not (HERE / "fixed").exists():
        raise RuntimeError("the mirror is read-only")
    with open(HERE / "ledger", "a") as ledger:
        ledger.write(f"forget {event.memory_id}\\n")
"""


@pytest.fixture
def project(tmp_path: Path, redis_url: str) -> Iterator[tuple[Path, Receiver, dict[str, str]]]:
    """The app module as the CLI sees it, and the same app running a worker in this process."""
    (tmp_path / "app.py").write_text(APP)
    secret = new_secret()
    env = cli_env(MEM0_RECEIVER_SECRETS=secret, MEM0_RECEIVER_BROKER_URL=redis_url)
    # Named "app" as in the CLI's process, so that handler names match.
    spec = importlib.util.spec_from_file_location("app", tmp_path / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    receiver: Receiver = module.receiver.copy(secrets=[secret], broker=redis_url)
    worker = dramatiq.Worker(receiver.broker, worker_threads=2, worker_timeout=20)
    worker.start()
    yield tmp_path, receiver, env
    worker.stop()


def post_failures(receiver: Receiver, memory_ids: list[str]) -> list[str]:
    with TestClient(receiver) as client:
        url = receiver.webhook_url("http://testserver/")
        ids = [
            client.post(url, content=make_body("memory_delete", memory_id=m)).json()["delivery_id"]
            for m in memory_ids
        ]
    store = failure_store(receiver.broker)
    wait_until(lambda: store.count() == len(memory_ids))
    return ids


def test_dlq_lists_replays_and_purges_failed_events(
    project: tuple[Path, Receiver, dict[str, str]],
) -> None:
    directory, receiver, env = project
    delivery_ids = post_failures(receiver, ["m1", "m2", "m3"])

    listed = mem0_receiver("dlq", "app:receiver", cwd=directory, env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[-1] == "3 failed event(s)."
    # Listed oldest first; the worker's two threads may fail them in any order.
    assert sorted(line.split("memory=")[1].split()[0] for line in lines[:-1]) == ["m1", "m2", "m3"]
    for line in lines[:-1]:
        assert "app.forget  memory_delete" in line
        assert "attempts=1  RuntimeError: the mirror is read-only" in line

    (directory / "fixed").touch()
    replayed = mem0_receiver(
        "dlq", "app:receiver", "--replay", "--id", delivery_ids[0], cwd=directory, env=env
    )
    assert replayed.stdout.strip() == "Replayed 1 failed event(s)."
    wait_until(lambda: (directory / "ledger").exists())
    assert (directory / "ledger").read_text() == "forget m1\n"
    assert failure_store(receiver.broker).count() == 2

    refused = subprocess.run(
        [str(BIN / "mem0-receiver"), "dlq", "app:receiver", "--purge"],
        cwd=directory,
        env=env,
        input="n\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "Delete 2 failed event(s) for good? [y/N]" in refused.stdout
    assert "Nothing deleted." in refused.stdout
    assert failure_store(receiver.broker).count() == 2

    purged = mem0_receiver(
        "dlq", "app:receiver", "--purge", "--yes", "--id", delivery_ids[1], cwd=directory, env=env
    )
    assert purged.stdout.strip() == "Purged 1 failed event(s)."
    (remaining,) = failure_store(receiver.broker).list()
    assert remaining.delivery_id == delivery_ids[2]


def test_replay_by_handler_runs_every_failure_of_that_handler(
    project: tuple[Path, Receiver, dict[str, str]],
) -> None:
    directory, receiver, env = project
    post_failures(receiver, ["a", "b"])
    (directory / "fixed").touch()
    result = mem0_receiver(
        "dlq", "app:receiver", "--replay", "--handler", "app.forget", cwd=directory, env=env
    )
    assert result.stdout.strip() == "Replayed 2 failed event(s)."
    ledger = directory / "ledger"
    wait_until(lambda: ledger.exists() and len(ledger.read_text().splitlines()) == 2)
    assert sorted((directory / "ledger").read_text().splitlines()) == ["forget a", "forget b"]
    assert failure_store(receiver.broker).count() == 0


def test_dlq_needs_a_durable_broker(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    result = mem0_receiver(
        "dlq", "app:receiver", cwd=tmp_path, env=cli_env(MEM0_RECEIVER_SECRETS="s")
    )
    assert result.returncode == 2
    assert "needs a durable broker" in result.stderr
