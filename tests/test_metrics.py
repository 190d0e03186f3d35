"""Prometheus metrics: through the real ASGI app, and from real dramatiq workers on Redis."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
from conftest import (
    RedisServer,
    Samples,
    cli_env,
    free_port,
    output,
    wait_for_port,
)
from dramatiq.middleware import CurrentMessage
from starlette.testclient import TestClient

from mem0_receiver import ConfigurationError, MemoryEvent, Receiver
from mem0_receiver.brokers import failure_store
from mem0_receiver.metrics import watch_workers
from mem0_receiver.testing import WebhookTester, make_body
from mem0_receiver.verify import new_secret

SECRET = new_secret()
JSON = {"Content-Type": "application/json"}


def make_receiver(**kwargs: Any) -> Receiver:
    receiver = Receiver(secrets=[SECRET], environ={}, **{"metrics": True, **kwargs})

    @receiver.on("memory_add", "memory_update")
    def remember(event: MemoryEvent) -> None:
        pass

    return receiver


def scrape(client: Any) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Samples(response.text)


def test_metrics_are_off_by_default_and_not_served() -> None:
    receiver = Receiver(secrets=[SECRET], environ={})
    assert receiver.metrics is None
    with WebhookTester(receiver) as hooks:
        assert hooks._client.get("/metrics").status_code == 404


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("1", True), ("true", True), ("on", True), ("0", False), ("", False), ("off", False)],
    ids=["1", "true", "on", "0", "empty", "off"],
)
def test_metrics_follow_the_environment(value: str, enabled: bool) -> None:
    receiver = Receiver(secrets=[SECRET], environ={"MEM0_RECEIVER_METRICS": value})
    assert receiver.settings.metrics is enabled
    assert (receiver.metrics is not None) is enabled


def test_a_metrics_flag_that_is_not_a_boolean_names_the_values() -> None:
    with pytest.raises(ConfigurationError, match="MEM0_RECEIVER_METRICS must be 1 or 0"):
        Receiver(secrets=[SECRET], environ={"MEM0_RECEIVER_METRICS": "yes please"})


def test_every_answer_is_counted_by_outcome_and_status_and_202s_are_timed() -> None:
    receiver = make_receiver(max_body_bytes=4096)
    body = make_body("memory_add")
    with WebhookTester(receiver) as hooks:
        client = hooks._client
        answers = [
            hooks.post(body),  # queued
            hooks.post(body),  # duplicate
            hooks.post(make_body("memory_update")),  # queued
            hooks.post(make_body("memory_delete")),  # ignored: no handler
            client.post("/", content=body, headers=JSON),  # no token
            hooks.post(b"{"),
            hooks.post(b'{"hello": "world"}'),
            hooks.post(body, headers={"Content-Type": "text/plain"}),
            hooks.post(b" " * 5000),
            client.get("/"),
        ]
        samples = scrape(client)
    expected = {
        ("queued", "202"): 2,
        ("duplicate", "202"): 1,
        ("ignored", "202"): 1,
        ("unauthorized", "401"): 1,
        ("malformed_body", "400"): 1,
        ("not_a_mem0_event", "422"): 1,
        ("unsupported_media_type", "415"): 1,
        ("body_too_large", "413"): 1,
        ("method_not_allowed", "405"): 1,
    }
    assert sum(expected.values()) == len(answers)
    for (outcome, status), count in expected.items():
        assert [r.status_code for r in answers].count(int(status)) >= count
        found = samples("mem0_receiver_requests_total", outcome=outcome, status=status)
        assert found == count, (outcome, status)
    assert samples("mem0_receiver_ack_latency_seconds_count") == 4
    assert samples("mem0_receiver_ack_latency_seconds_bucket", le="+Inf") == 4
    assert 0 < samples("mem0_receiver_ack_latency_seconds_sum")  # type: ignore[operator]


def test_an_enqueue_failure_is_counted_as_broker_unavailable(
    make_redis: Callable[..., RedisServer],
) -> None:
    server = make_redis()
    receiver = make_receiver(broker=server.url, enqueue_timeout=0.5)
    with TestClient(receiver) as client:
        url = receiver.webhook_url("http://testserver/")
        assert client.post(url, content=make_body("memory_add"), headers=JSON).status_code == 202
        server.stop()
        response = client.post(url, content=make_body("memory_update"), headers=JSON)
        samples = scrape(client)
    assert response.status_code == 503
    assert samples("mem0_receiver_requests_total", outcome="queued", status="202") == 1
    assert samples("mem0_receiver_requests_total", outcome="broker_unavailable", status="503") == 1
    assert samples("mem0_receiver_ack_latency_seconds_count") == 1


def test_each_receiver_counts_in_a_registry_of_its_own() -> None:
    receiver = make_receiver()
    with WebhookTester(receiver) as first, WebhookTester(receiver) as second:
        first.send("memory_add")
        first.send("memory_update")
        second.send("memory_add")
        counts = [
            scrape(tester._client)("mem0_receiver_requests_total", outcome="queued", status="202")
            for tester in (first, second)
        ]
    assert counts == [2, 1]


def test_metrics_are_served_under_the_mount_point_not_on_the_webhook_path() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    receiver = make_receiver()
    app = Starlette(routes=[Mount("/webhooks/mem0", app=receiver)], lifespan=receiver.lifespan)
    with TestClient(app) as client:
        url = receiver.webhook_url("http://testserver/webhooks/mem0")
        assert client.post(url, content=make_body("memory_add"), headers=JSON).status_code == 202
        samples = Samples(client.get("/webhooks/mem0/metrics").text)
        assert client.post("/webhooks/mem0/metrics").status_code == 405
    assert samples("mem0_receiver_requests_total", outcome="queued", status="202") == 1


@pytest.mark.parametrize(
    "settings",
    [{"metrics": True}, {"environ": {"MEM0_RECEIVER_METRICS": "1"}}],
    ids=["argument", "environment"],
)
def test_metrics_without_prometheus_client_fail_at_start_up_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # "not installed"
    monkeypatch.delitem(sys.modules, "mem0_receiver.metrics", raising=False)
    receiver = Receiver(secrets=[SECRET], **{"environ": {}, **settings})
    with pytest.raises(ConfigurationError) as check:
        receiver.check()
    with pytest.raises(ConfigurationError) as build:
        receiver.metrics  # noqa: B018
    for raised in (check, build):
        message = str(raised.value)
        assert "pip install 'mem0-receiver[metrics]'" in message
        assert "\n" not in message


APP = """
from mem0_receiver import Receiver

receiver = Receiver()


@receiver.on("memory_add")
def remember(event):
    pass


@receiver.on("memory_add", max_retries=0)
def broken(event):
    raise RuntimeError("broken on purpose")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def test_the_worker_command_without_prometheus_client_ends_in_one_line(
    project: Path, redis_url: str
) -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "from mem0_receiver.cli import main; main()"
    )
    env = cli_env(
        MEM0_RECEIVER_SECRETS=SECRET, MEM0_RECEIVER_BROKER_URL=redis_url, MEM0_RECEIVER_METRICS="1"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "worker", "app:receiver"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "pip install 'mem0-receiver[metrics]'" in done.stderr


def test_the_worker_command_refuses_a_target_that_imported_prometheus_client_too_early(
    project: Path, redis_url: str, spawn: Any
) -> None:
    (project / "app.py").write_text("import prometheus_client\n" + APP)
    env = cli_env(
        MEM0_RECEIVER_SECRETS=SECRET, MEM0_RECEIVER_BROKER_URL=redis_url, MEM0_RECEIVER_METRICS="1"
    )
    worker = spawn("worker", "app:receiver", "--processes", "1", cwd=project, env=env)
    assert worker.wait(30) == 2
    assert "start the worker with PROMETHEUS_MULTIPROC_DIR=" in output(worker)


def _sender(redis_url: str) -> Receiver:
    """A receiver in the test that enqueues for the app's handlers (same names)."""
    sender = Receiver(secrets=[SECRET], broker=redis_url, environ={})
    sender.on("memory_add", name="app.remember")(lambda event: None)
    sender.on("memory_add", name="app.broken", max_retries=0)(lambda event: None)
    return sender


def _post(receiver: Receiver, count: int) -> None:
    with TestClient(receiver) as client:
        url = receiver.webhook_url("http://testserver/")
        for index in range(count):
            body = make_body("memory_add", memory_id=f"m{index}")
            assert client.post(url, content=body, headers=JSON).status_code == 202


def outcome(samples: Samples, handler: str, name: str) -> float | None:
    """The count of ``handler``'s runs that ended in ``name``."""
    return samples("mem0_receiver_handler_outcomes_total", handler=handler, outcome=name)


def _poll(url: str, ready: Callable[[Samples], bool], timeout: float = 20) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = Samples(httpx.get(url).text)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_worker_processes_serve_dramatiq_metrics_handler_outcomes_and_failure_store_size(
    project: Path, redis_url: str, spawn: Any
) -> None:
    port, directory = free_port(), project / "prometheus"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"left by an earlier run")
    env = cli_env(
        MEM0_RECEIVER_SECRETS=SECRET,
        MEM0_RECEIVER_BROKER_URL=redis_url,
        MEM0_RECEIVER_METRICS="1",
        dramatiq_prom_host="127.0.0.1",
        dramatiq_prom_port=str(port),
        dramatiq_prom_db=str(directory),
    )
    worker = spawn(
        "worker", "app:receiver", "--processes", "2", "--threads", "2", cwd=project, env=env
    )
    wait_for_port(port, timeout=30, process=worker)
    # A process killed between creating its file and sizing it leaves it empty
    # (prometheus/client_python#1199); every scrape in that window met one too.
    (directory / "counter_99999.db").touch()
    _post(_sender(redis_url), 4)

    samples = _poll(
        f"http://127.0.0.1:{port}/metrics",
        lambda s: outcome(s, "app.remember", "ok") == 4 and outcome(s, "app.broken", "failed") == 4,
    )
    assert outcome(samples, "app.remember", "ok") == 4, output(worker)
    assert outcome(samples, "app.broken", "failed") == 4
    assert outcome(samples, "app.broken", "crashed") == 0  # every series starts at zero
    assert samples("mem0_receiver_failure_store_entries") == 4
    actor = {"queue_name": "mem0", "actor_name": "mem0_receiver.app.remember"}
    assert samples("dramatiq_messages_total", **actor) == 4
    assert (
        samples(
            "dramatiq_message_errors_total", **{**actor, "actor_name": "mem0_receiver.app.broken"}
        )
        == 4
    )
    assert "mem0_receiver_requests_total" not in samples.text  # the HTTP side's, not here
    assert worker.poll() is None


def test_serve_with_several_processes_counts_every_request_in_every_scrape(
    project: Path, redis_url: str, spawn: Any
) -> None:
    port = free_port()
    env = cli_env(
        MEM0_RECEIVER_SECRETS=SECRET, MEM0_RECEIVER_BROKER_URL=redis_url, MEM0_RECEIVER_METRICS="1"
    )
    server = spawn(
        "serve", "app:receiver", "--port", str(port), "--workers", "2", cwd=project, env=env
    )
    wait_for_port(port, timeout=30, process=server)
    url = Receiver(secrets=[SECRET], environ={}).webhook_url(f"http://127.0.0.1:{port}/")
    with httpx.Client() as client:
        for index in range(8):
            body = make_body("memory_add", memory_id=f"m{index}")
            assert client.post(url, content=body, headers=JSON).status_code == 202
    # Each scrape reaches one process or the other (new connections spread over both).
    for _ in range(6):
        samples = Samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        assert samples("mem0_receiver_requests_total", outcome="queued", status="202") == 8
        assert samples("mem0_receiver_ack_latency_seconds_count") == 8


def test_in_process_workers_count_outcomes_and_the_failure_store_on_the_receiver(
    redis_url: str,
) -> None:
    receiver = Receiver(secrets=[SECRET], broker=redis_url, metrics=True, environ={})
    done: list[dramatiq.Message[Any]] = []

    @receiver.on("memory_add", name="remember")
    def remember(event: MemoryEvent) -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        done.append(message)

    @receiver.on("memory_add", name="broken", max_retries=1, min_backoff=10, max_backoff=20)
    def broken(event: MemoryEvent) -> None:
        raise RuntimeError("broken on purpose")

    assert receiver.metrics is not None
    watch_workers(receiver.broker, receiver.metrics.registry)
    worker = dramatiq.Worker(receiver.broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        with TestClient(receiver) as client:
            url = receiver.webhook_url("http://testserver/")
            assert (
                client.post(url, content=make_body("memory_add"), headers=JSON).status_code == 202
            )
            store = failure_store(receiver.broker)
            deadline = time.monotonic() + 10
            while (store.count() < 1 or not done) and time.monotonic() < deadline:
                time.sleep(0.02)
            receiver.broker.enqueue(done[0])  # a redelivery of completed work
            receiver.broker.join("mem0", timeout=10_000)
            worker.join()
            samples = scrape(client)
    finally:
        worker.stop()

    remember_outcomes = [outcome(samples, "remember", name) for name in ("ok", "skipped", "failed")]
    broken_outcomes = [outcome(samples, "broken", name) for name in ("ok", "retrying", "failed")]
    assert remember_outcomes == [1, 1, 0]
    assert broken_outcomes == [0, 1, 1]
    assert samples("mem0_receiver_failure_store_entries") == 1
    assert samples("mem0_receiver_requests_total", outcome="queued", status="202") == 1


def test_dev_serves_the_workers_outcomes_and_failure_store_beside_the_receivers(
    project: Path, spawn: Any
) -> None:
    port = free_port()
    env = cli_env(MEM0_RECEIVER_SECRETS=SECRET, MEM0_RECEIVER_METRICS="1")
    dev = spawn("dev", "app:receiver", "--port", str(port), cwd=project, env=env)
    wait_for_port(port, process=dev)
    url = Receiver(secrets=[SECRET], environ={}).webhook_url(f"http://127.0.0.1:{port}/")
    assert httpx.post(url, content=make_body("memory_add"), headers=JSON).status_code == 202

    samples = _poll(
        f"http://127.0.0.1:{port}/metrics",
        lambda s: outcome(s, "app.broken", "failed") == 1 and outcome(s, "app.remember", "ok") == 1,
    )
    assert outcome(samples, "app.remember", "ok") == 1, output(dev)
    assert outcome(samples, "app.broken", "failed") == 1
    assert samples("mem0_receiver_failure_store_entries") == 1
    assert samples("mem0_receiver_requests_total", outcome="queued", status="202") == 1
