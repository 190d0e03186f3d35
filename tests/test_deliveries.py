"""Recent deliveries and queue depths, as workers record them, on both kinds of broker."""

from __future__ import annotations

import time

import dramatiq
import pytest
from conftest import wait_until
from starlette.testclient import TestClient

from mem0_receiver import MemoryEvent, Receiver
from mem0_receiver.deliveries import queue_depths, recent_deliveries
from mem0_receiver.testing import make_body
from mem0_receiver.verify import new_secret


@pytest.mark.parametrize("broker", ["redis", "in-memory"])
def test_each_handlers_outcome_is_recorded_per_delivery(broker: str, redis_url: str) -> None:
    receiver = Receiver(
        secrets=[new_secret()], broker=redis_url if broker == "redis" else None, environ={}
    )

    @receiver.on("memory_add")
    def remember(event: MemoryEvent) -> None:
        pass

    @receiver.on("memory_add", max_retries=0)
    def broken(event: MemoryEvent) -> None:
        raise RuntimeError("no")

    with TestClient(receiver) as client:
        url = receiver.webhook_url("http://testserver/")
        first = client.post(url, content=make_body("memory_add", memory_id="m1")).json()
        second = client.post(url, content=make_body("memory_add", memory_id="m2")).json()
        assert queue_depths(receiver.broker)["mem0"] == 4
    worker = dramatiq.Worker(receiver.broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        wait_until(lambda: sum(len(r.handlers) for r in recent_deliveries(receiver.broker)) == 4)
    finally:
        worker.stop()
    records = recent_deliveries(receiver.broker)
    assert {r.delivery_id for r in records} == {first["delivery_id"], second["delivery_id"]}
    for record in records:
        assert record.event_type == "memory_add"
        assert record.memory_id in ("m1", "m2")
        assert record.handlers == {
            "test_deliveries.test_each_handlers_outcome_is_recorded_per_delivery.broken": "failed",
            "test_deliveries.test_each_handlers_outcome_is_recorded_per_delivery.remember": "ok",
        }
        assert abs(record.received_at - time.time()) < 60
    assert queue_depths(receiver.broker)["mem0"] == 0
    assert len(recent_deliveries(receiver.broker, limit=1)) == 1


def test_deliveries_and_queue_depths_are_read_on_rabbitmq_too(
    rabbitmq_url: str, redis_url: str
) -> None:
    from conftest import stop_worker

    receiver = Receiver(
        secrets=[new_secret()], broker=rabbitmq_url, state_url=redis_url, environ={}
    )

    @receiver.on("memory_delete")
    def forget(event: MemoryEvent) -> None:
        pass

    receiver.broker.flush_all()
    with TestClient(receiver) as client:
        url = receiver.webhook_url("http://testserver/")
        sent = client.post(url, content=make_body("memory_delete", memory_id="r1")).json()
    assert queue_depths(receiver.broker) == {"mem0": 1, "mem0.DQ": 0}
    worker = dramatiq.Worker(receiver.broker, worker_threads=1, worker_timeout=20)
    worker.start()
    try:
        wait_until(lambda: len(recent_deliveries(receiver.broker)) == 1)
    finally:
        stop_worker(worker)
    (record,) = recent_deliveries(receiver.broker)
    assert record.delivery_id == sent["delivery_id"]
    assert list(record.handlers.values()) == ["ok"]
