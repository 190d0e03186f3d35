"""The example projects in examples/, each driven end to end as its README describes.

The examples are not packages: each ``app.py`` is imported from its own
directory under a name of its own, with that directory on ``sys.path`` only
while it loads (memory_mirror's app imports its sibling ``mirror``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import httpx
import pytest
from conftest import ROOT, cli_env, free_port, mem0_receiver, output, wait_for_port
from starlette.testclient import TestClient

from mem0_receiver import Receiver
from mem0_receiver.testing import DOCUMENTED_BODIES, WebhookTester, new_secret

EXAMPLES = ROOT / "examples"
DOCUMENTED_ID = "a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5"
PRIVATE_TEXT = "Alex's passport number is X1234567"


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """An environment with one receiver secret, the in-memory broker and nothing else of ours."""
    for name in [name for name in os.environ if name.startswith("MEM0_RECEIVER_")]:
        monkeypatch.delenv(name)
    value = new_secret()
    monkeypatch.setenv("MEM0_RECEIVER_SECRETS", value)
    return value


@pytest.fixture
def load_example(secret: str) -> Iterator[Callable[[str], ModuleType]]:
    """Import ``examples/<name>/app.py`` afresh, as ``example_<name>``; forget it afterwards."""
    forget: list[str] = []

    def load(name: str) -> ModuleType:
        directory = EXAMPLES / name
        spec = importlib.util.spec_from_file_location(f"example_{name}", directory / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        before = set(sys.modules)
        sys.modules[spec.name] = module
        sys.path.insert(0, str(directory))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(directory))
            # The example's own siblings (`mirror`), not the libraries it imported.
            for added in set(sys.modules) - before:
                origin = getattr(sys.modules[added], "__file__", None) or ""
                if added == spec.name or Path(origin).parent == directory:
                    forget.append(added)
        return module

    yield load
    for name in forget:
        sys.modules.pop(name, None)


# quickstart ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "fields"),
    [
        ("memory_add", {"memory": PRIVATE_TEXT}),
        ("memory_update", {"memory": PRIVATE_TEXT}),
        ("memory_delete", {"memory": PRIVATE_TEXT}),
        ("memory_categorize", {"categories": ["personal", "travel"]}),
        ("memory_add", {"memory": PRIVATE_TEXT, "shape": "flat"}),
    ],
    ids=["add", "update", "delete", "categorize", "flat-add"],
)
def test_quickstart_logs_each_event_by_its_ids_without_the_memory_text(
    load_example: Callable[[str], ModuleType],
    caplog: pytest.LogCaptureFixture,
    event_type: str,
    fields: dict[str, Any],
) -> None:
    quickstart = load_example("quickstart")
    caplog.set_level(logging.INFO)

    with WebhookTester(quickstart.receiver) as hooks:
        delivery_id = hooks.send(event_type, memory_id="mem_42", **fields).json()["delivery_id"]
        assert hooks.drain() == 1

    assert [r.getMessage() for r in caplog.records if r.name == "quickstart"] == [
        f"Received {event_type} delivery={delivery_id} memory_id=mem_42"
    ]
    assert PRIVATE_TEXT not in caplog.text


def test_quickstart_runs_under_mem0_receiver_dev_and_handles_a_documented_event(
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    port = free_port()
    process = spawn(
        "dev",
        "app:receiver",
        "--port",
        str(port),
        cwd=EXAMPLES / "quickstart",
        env=cli_env(MEM0_RECEIVER_SECRETS=new_secret()),
    )
    wait_for_port(port, timeout=30, process=process)
    found = re.search(r"Register this URL with Mem0 .*: (\S+)", output(process))
    assert found is not None, output(process)

    response = httpx.post(
        found.group(1),
        content=DOCUMENTED_BODIES["memory_add"],
        headers={"Content-Type": "application/json"},
        timeout=10,
    )

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    line = (
        f"Received memory_add delivery={response.json()['delivery_id']} memory_id={DOCUMENTED_ID}"
    )
    deadline = time.monotonic() + 10
    while line not in output(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in output(process)
    # The memory text appears only in the sample curl line that dev prints.
    assert [text for text in output(process).splitlines() if "Name is Alex" in text] == [
        text for text in output(process).splitlines() if text.startswith("  curl ")
    ]


def test_quickstart_accepts_the_url_that_mem0_receiver_url_prints(
    load_example: Callable[[str], ModuleType], secret: str
) -> None:
    result = mem0_receiver(
        "url",
        "https://hooks.example.com/",
        cwd=EXAMPLES / "quickstart",
        env=cli_env(MEM0_RECEIVER_SECRETS=secret),
    )
    assert result.returncode == 0, result.stderr
    url = urlsplit(result.stdout.strip())
    assert (url.netloc, url.path) == ("hooks.example.com", "/")

    quickstart = load_example("quickstart")
    with TestClient(quickstart.receiver) as client:
        accepted = client.post(f"/?{url.query}", content=DOCUMENTED_BODIES["memory_add"])
        refused = client.post("/?token=forged", content=DOCUMENTED_BODIES["memory_add"])
    assert (accepted.status_code, refused.status_code) == (202, 401)


# fastapi_app ---------------------------------------------------------------


@pytest.fixture
def fastapi_app(
    load_example: Callable[[str], ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ModuleType:
    monkeypatch.setenv("EVENTS_DB", str(tmp_path / "events.sqlite3"))
    return load_example("fastapi_app")


def run_queued_handlers(receiver: Receiver) -> None:
    """Run what the receiver queued on its in-memory broker, with a real dramatiq worker.

    This is what ``mem0-receiver dev`` does. ``WebhookTester.drain()`` cannot
    help here: the tester copies the receiver onto a broker of its own, and
    the host app posts to the original.
    """
    broker = receiver.broker
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        for queue in {handler.queue_name for handler in receiver.handlers}:
            broker.join(queue, timeout=10_000)
        worker.join()
    finally:
        worker.stop()


def test_fastapi_app_serves_its_own_routes_next_to_the_mounted_receiver(
    fastapi_app: ModuleType,
) -> None:
    with TestClient(fastapi_app.app) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/items").json() == [
            {"id": 1, "name": "notebook"},
            {"id": 2, "name": "pencil"},
        ]
        assert client.get("/events/recent").json() == []
        ready = client.get("/webhooks/mem0/readyz")
    assert ready.json() == {"status": "ok", "broker": "in-memory"}


def test_fastapi_app_shows_events_posted_to_the_mounted_receiver(
    fastapi_app: ModuleType,
) -> None:
    receiver = fastapi_app.receiver
    url = receiver.webhook_url("http://testserver/webhooks/mem0")
    with TestClient(fastapi_app.app) as client:
        accepted = [
            client.post(url, content=DOCUMENTED_BODIES[name]) for name in ("memory_add", "flat")
        ]
        refused = client.post("/webhooks/mem0/", content=DOCUMENTED_BODIES["memory_add"])
        assert [r.status_code for r in accepted] == [202, 202]
        assert [r.json()["status"] for r in accepted] == ["queued", "queued"]
        assert refused.status_code == 401

        run_queued_handlers(receiver)
        recent = client.get("/events/recent").json()

    assert [(e["event_type"], e["memory_id"], e["delivery_id"]) for e in recent] == [
        ("memory_add", "mem_456", accepted[1].json()["delivery_id"]),
        ("memory_add", DOCUMENTED_ID, accepted[0].json()["delivery_id"]),
    ]


def test_fastapi_app_handler_records_events_sent_through_the_webhook_tester(
    fastapi_app: ModuleType,
) -> None:
    with WebhookTester(fastapi_app.receiver) as hooks:
        hooks.send("memory_add", memory_id="mem_1")
        hooks.send("memory_categorize", memory_id="mem_1", categories=["travel", "food"])
        assert hooks.drain() == 2

    with TestClient(fastapi_app.app) as client:
        recent = client.get("/events/recent", params={"limit": 1}).json()
    assert [(e["event_type"], e["memory_id"], e["categories"]) for e in recent] == [
        ("memory_categorize", "mem_1", "travel,food")
    ]


@pytest.fixture
def uvicorn(spawn: Callable[..., subprocess.Popen[str]]) -> Callable[..., subprocess.Popen[str]]:
    """Start ``uvicorn`` as the README does; stopped after the test."""

    def start(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
        return spawn(*args, cwd=cwd, env=env, program="uvicorn")

    return start


def test_fastapi_app_runs_under_uvicorn_with_a_mem0_receiver_worker_on_redis(
    spawn: Callable[..., subprocess.Popen[str]],
    uvicorn: Callable[..., subprocess.Popen[str]],
    redis_url: str,
    tmp_path: Path,
) -> None:
    directory = EXAMPLES / "fastapi_app"
    env = cli_env(
        MEM0_RECEIVER_SECRETS=new_secret(),
        MEM0_RECEIVER_BROKER_URL=redis_url,
        EVENTS_DB=str(tmp_path / "events.sqlite3"),
    )
    port = free_port()
    web = uvicorn("app:app", "--port", str(port), "--no-access-log", cwd=directory, env=env)
    spawn("worker", "app:receiver", "--processes", "1", "--threads", "1", cwd=directory, env=env)
    wait_for_port(port, timeout=30, process=web)
    base = f"http://127.0.0.1:{port}"
    url = mem0_receiver("url", f"{base}/webhooks/mem0", cwd=directory, env=env).stdout.strip()

    response = httpx.post(
        url,
        content=DOCUMENTED_BODIES["memory_categorize"],
        headers={"Content-Type": "application/json"},
        timeout=10,
    )

    assert response.status_code == 202
    recent: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while not recent and time.monotonic() < deadline:
        time.sleep(0.1)
        recent = httpx.get(f"{base}/events/recent", timeout=10).json()
    assert [(e["event_type"], e["memory_id"], e["categories"]) for e in recent] == [
        ("memory_categorize", DOCUMENTED_ID, "hobbies,travel")
    ]
    assert "token=" not in output(web)


# memory_mirror -------------------------------------------------------------

Step = tuple[str, dict[str, Any]]
Row = tuple[str, str | None, tuple[str, ...], bool]

MEMORY = "mem_alex"
ADD: Step = ("memory_add", {"memory": "Name is Alex"})
UPDATE: Step = ("memory_update", {"memory": "Name is Alexandra"})
CATEGORIZE: Step = ("memory_categorize", {"categories": ["personal", "names"]})
DELETE: Step = ("memory_delete", {"memory": "Name is Alexandra"})
LATE_UPDATE: Step = ("memory_update", {"memory": "Name is Sandra"})

# add → update → categorize → duplicate add → delete → late update, and the
# mirror after each step.
SEQUENCE: list[tuple[Step, Row]] = [
    (ADD, (MEMORY, "Name is Alex", (), False)),
    (UPDATE, (MEMORY, "Name is Alexandra", (), False)),
    (CATEGORIZE, (MEMORY, "Name is Alexandra", ("names", "personal"), False)),
    (ADD, (MEMORY, "Name is Alexandra", ("names", "personal"), False)),
    (DELETE, (MEMORY, None, (), True)),
    (LATE_UPDATE, (MEMORY, None, (), True)),
]


@pytest.fixture
def mirror_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mirror.sqlite3"
    monkeypatch.setenv("MIRROR_DB", str(path))
    return path


@pytest.fixture
def memory_mirror(load_example: Callable[[str], ModuleType], mirror_db: Path) -> ModuleType:
    return load_example("memory_mirror")


def deliver(receiver: Receiver, step: Step) -> None:
    """Deliver one event and run its handler.

    Each delivery goes through a fresh tester, as after a restart or past the
    receiver's dedupe window: only the mirror's own bookkeeping stands between
    a duplicate and the data.
    """
    event_type, fields = step
    with WebhookTester(receiver) as hooks:
        hooks.send(event_type, memory_id=MEMORY, **fields)
        assert hooks.drain() == 1


def mirrored(example: ModuleType) -> list[Row]:
    return [(m.memory_id, m.memory, m.categories, m.deleted) for m in example.mirror.read()]


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, stamps and delivery ids included."""
    with closing(sqlite3.connect(path)) as db:
        return {
            table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("memories", "categories", "applied")
        }


def test_memory_mirror_is_right_after_each_step_of_a_sequence_with_a_duplicate_and_a_late_update(
    memory_mirror: ModuleType,
) -> None:
    for step, expected in SEQUENCE:
        deliver(memory_mirror.receiver, step)
        assert mirrored(memory_mirror) == [expected], step


@pytest.mark.parametrize(
    "length",
    range(1, len(SEQUENCE) + 1),
    ids=["add", "update", "categorize", "duplicate-add", "delete", "late-update"],
)
def test_memory_mirror_is_unchanged_by_replaying_the_sequence_up_to_any_step(
    memory_mirror: ModuleType, mirror_db: Path, length: int
) -> None:
    for step, _ in SEQUENCE[:length]:
        deliver(memory_mirror.receiver, step)
    before = dump(mirror_db)

    for step, _ in SEQUENCE[:length]:
        deliver(memory_mirror.receiver, step)

    assert dump(mirror_db) == before


def test_memory_mirror_is_the_same_after_the_sequence_is_replayed_twice(
    memory_mirror: ModuleType, mirror_db: Path
) -> None:
    for step, _ in SEQUENCE:
        deliver(memory_mirror.receiver, step)
    once = dump(mirror_db)

    for _ in range(2):
        for step, _ in SEQUENCE:
            deliver(memory_mirror.receiver, step)
        assert dump(mirror_db) == once

    assert mirrored(memory_mirror) == [SEQUENCE[-1][1]]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([DELETE, ADD], (MEMORY, None, (), True)),
        ([DELETE, CATEGORIZE], (MEMORY, None, (), True)),
        ([ADD, ("memory_add", {"memory": "Name is Al"})], (MEMORY, "Name is Al", (), False)),
        ([UPDATE, ADD], (MEMORY, "Name is Alexandra", (), False)),
        ([ADD, UPDATE, LATE_UPDATE, UPDATE], (MEMORY, "Name is Sandra", (), False)),
        ([CATEGORIZE, ADD], (MEMORY, "Name is Alex", ("names", "personal"), False)),
        (
            [CATEGORIZE, ("memory_categorize", {"categories": ["travel"]})],
            (MEMORY, None, ("travel",), False),
        ),
        ([ADD, ("memory_update", {"memory": None})], (MEMORY, "Name is Alex", (), False)),
    ],
    ids=[
        "a-late-add-does-not-resurrect-a-deleted-memory",
        "a-late-categorize-does-not-resurrect-a-deleted-memory",
        "an-add-after-an-add-overwrites",
        "a-late-add-does-not-undo-an-update",
        "a-replayed-update-does-not-undo-a-later-one",
        "categories-wait-for-their-add",
        "categorize-replaces-the-categories",
        "an-update-without-text-keeps-the-text",
    ],
)
def test_memory_mirror_applies_events_in_any_order_by_its_rules(
    memory_mirror: ModuleType, steps: list[Step], expected: Row
) -> None:
    for step in steps:
        deliver(memory_mirror.receiver, step)
    assert mirrored(memory_mirror) == [expected]


@pytest.mark.parametrize(
    "command", [["query.py"], ["-m", "query"]], ids=["as-a-script", "as-a-module"]
)
def test_memory_mirror_query_prints_id_deleted_flag_categories_and_text(
    memory_mirror: ModuleType, mirror_db: Path, command: list[str]
) -> None:
    for step, _ in SEQUENCE[:3]:
        deliver(memory_mirror.receiver, step)
    with WebhookTester(memory_mirror.receiver) as hooks:
        hooks.send("memory_add", memory_id="mem_gone", memory="Likes tea")
        hooks.send("memory_delete", memory_id="mem_gone")
        hooks.drain()

    result = subprocess.run(
        [sys.executable, *command],
        cwd=EXAMPLES / "memory_mirror",
        env=cli_env(MIRROR_DB=str(mirror_db)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "MEMORY ID  DELETED  CATEGORIES      MEMORY",
        "mem_alex   no       names,personal  Name is Alexandra",
        "mem_gone   yes      -               -",
    ]


def test_memory_mirror_query_says_so_when_there_is_no_mirror(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.sqlite3"
    result = subprocess.run(
        [sys.executable, "query.py", "--db", str(missing)],
        cwd=EXAMPLES / "memory_mirror",
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert (
        result.stderr == f"query: No mirror at {missing}; start the receiver, or set MIRROR_DB.\n"
    )
    assert not missing.exists()
