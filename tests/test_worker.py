"""The worker side, with a real Redis and real dramatiq workers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import dramatiq
import pytest
from conftest import start_worker, stop_worker, wait_until
from starlette.testclient import TestClient

from mem0_receiver import MemoryAdded, MemoryCategorized, MemoryEvent, Receiver
from mem0_receiver.brokers import failure_store
from mem0_receiver.testing import make_body
from mem0_receiver.verify import new_secret

FAST_RETRIES = {"min_backoff": 10, "max_backoff": 50}


class Ledger:
    """What handlers did, written outside the system under test."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: Counter[str] = Counter()
        self.events: list[MemoryEvent] = []

    def record(self, name: str, event: MemoryEvent) -> None:
        with self.lock:
            self.runs[name] += 1
            self.events.append(event)


@pytest.fixture
def receiver(broker_url: tuple[str, str | None]) -> Receiver:
    url, state_url = broker_url
    return Receiver(secrets=[new_secret()], broker=url, state_url=state_url, environ={})


@pytest.fixture
def run(receiver: Receiver) -> Iterator[Callable[..., TestClient]]:
    """Post through the real app while a real dramatiq worker consumes from the broker."""
    workers: list[dramatiq.Worker] = []
    clients: list[TestClient] = []

    def start() -> TestClient:
        workers.append(start_worker(receiver.broker, worker_threads=2, worker_timeout=50))
        client = TestClient(receiver)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)
    for worker in workers:
        stop_worker(worker)


def post(receiver: Receiver, client: TestClient, body: bytes) -> str:
    response = client.post(
        receiver.webhook_url("http://testserver/"),
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    delivery_id: str = response.json()["delivery_id"]
    return delivery_id


def test_sync_and_async_handlers_receive_the_parsed_event(
    receiver: Receiver, run: Callable[[], TestClient]
) -> None:
    ledger = Ledger()

    @receiver.on("memory_add")
    def remember(event: MemoryAdded) -> None:
        ledger.record("remember", event)

    @receiver.on("*")
    async def audit(event: MemoryEvent) -> None:
        ledger.record("audit", event)

    client = run()
    delivery_id = post(receiver, client, make_body("memory_add", memory="Name is Alex"))
    wait_until(lambda: sum(ledger.runs.values()) == 2)
    assert ledger.runs == {"remember": 1, "audit": 1}
    first, second = ledger.events
    assert first == second
    assert isinstance(first, MemoryAdded)
    assert first.memory == "Name is Alex"
    assert first.delivery.delivery_id == delivery_id


def test_failing_handler_retries_while_its_sibling_runs_once(
    receiver: Receiver, run: Callable[[], TestClient]
) -> None:
    ledger = Ledger()

    @receiver.on("memory_categorize", max_retries=5, **FAST_RETRIES)
    def flaky(event: MemoryCategorized) -> None:
        ledger.record("flaky", event)
        if ledger.runs["flaky"] < 3:
            raise RuntimeError("downstream is down")

    @receiver.on("memory_categorize")
    def steady(event: MemoryCategorized) -> None:
        ledger.record("steady", event)

    client = run()
    post(receiver, client, make_body("memory_categorize", categories=["travel"]))
    wait_until(lambda: ledger.runs["flaky"] == 3)
    time.sleep(0.3)  # Give a wrong second run of `steady` the chance to show up.
    assert ledger.runs == {"flaky": 3, "steady": 1}


def test_exhausted_retries_go_to_the_failure_store(
    receiver: Receiver, run: Callable[[], TestClient]
) -> None:
    ledger = Ledger()

    @receiver.on("memory_delete", max_retries=2, **FAST_RETRIES)
    def broken(event: MemoryEvent) -> None:
        ledger.record("broken", event)
        raise RuntimeError("always fails")

    client = run()
    post(receiver, client, make_body("memory_delete"))
    store = failure_store(receiver.broker)
    wait_until(lambda: store.count() == 1)
    assert ledger.runs["broken"] == 3  # the first attempt and two retries


def test_duplicate_delivery_runs_each_handler_once(
    receiver: Receiver, run: Callable[[], TestClient]
) -> None:
    ledger = Ledger()

    @receiver.on("memory_update")
    def sync(event: MemoryEvent) -> None:
        ledger.record("sync", event)

    client = run()
    body = make_body("memory_update", memory="Name is Sam")
    first = post(receiver, client, body)
    assert post(receiver, client, body) == first
    wait_until(lambda: ledger.runs["sync"] == 1)
    time.sleep(0.3)
    assert ledger.runs["sync"] == 1


def test_handlers_on_their_own_queue_are_consumed_there(
    receiver: Receiver, run: Callable[[], TestClient]
) -> None:
    ledger = Ledger()

    @receiver.on("memory_add", queue_name="sync", priority=10)
    def mirrored(event: MemoryEvent) -> None:
        ledger.record("mirrored", event)

    client = run()
    post(receiver, client, make_body("memory_add"))
    wait_until(lambda: ledger.runs["mirrored"] == 1)
    assert "sync" in receiver.broker.get_declared_queues()
