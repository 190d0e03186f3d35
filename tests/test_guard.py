"""The delivery guard on real dramatiq workers and a real Redis: failures, dedupe, order."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
from conftest import start_worker, stop_worker, wait_until
from dramatiq.brokers.stub import StubBroker
from starlette.testclient import TestClient

from mem0_receiver import MemoryEvent, Receiver
from mem0_receiver.brokers import failure_store
from mem0_receiver.events import Delivery, parse_event, utcnow
from mem0_receiver.failures import RedisFailureStore
from mem0_receiver.guard import DeliveryGuard
from mem0_receiver.testing import make_body
from mem0_receiver.tracking import RedisTracker
from mem0_receiver.verify import new_secret
from mem0_receiver.worker import EVENT, encode_message

FAST = {"min_backoff": 10, "max_backoff": 40}


@pytest.fixture(params=["redis", "rabbitmq", "in-memory"])
def receiver(request: pytest.FixtureRequest, redis_url: str) -> Receiver:
    if request.param == "rabbitmq":
        url = request.getfixturevalue("rabbitmq_url")
        return Receiver(secrets=[new_secret()], broker=url, state_url=redis_url, environ={})
    broker = redis_url if request.param == "redis" else None
    return Receiver(secrets=[new_secret()], broker=broker, environ={})


@pytest.fixture
def client(receiver: Receiver) -> Iterator[Callable[[bytes], str]]:
    worker: list[dramatiq.Worker] = []
    test_client = TestClient(receiver)
    test_client.__enter__()
    url = receiver.webhook_url("http://testserver/")

    def post(body: bytes) -> str:
        if not worker:
            worker.append(start_worker(receiver.broker, worker_threads=4, worker_timeout=20))
        response = test_client.post(url, content=body)
        assert response.status_code == 202, response.text
        delivery_id: str = response.json()["delivery_id"]
        return delivery_id

    yield post
    test_client.__exit__(None, None, None)
    for w in worker:
        stop_worker(w)


def test_exhausted_retries_land_in_the_failure_store_with_what_went_wrong(
    receiver: Receiver, client: Callable[[bytes], str]
) -> None:
    @receiver.on("memory_delete", max_retries=2, **FAST)
    def forget(event: MemoryEvent) -> None:
        raise ValueError("the mirror is read-only")

    delivery_id = client(make_body("memory_delete", memory_id="m1"))
    store = failure_store(receiver.broker)
    wait_until(lambda: store.count() == 1)
    (failure,) = store.list()
    assert failure.handler.endswith("forget")
    assert (failure.event_type, failure.memory_id, failure.delivery_id) == (
        "memory_delete",
        "m1",
        delivery_id,
    )
    assert (failure.attempts, failure.reason) == (3, "retries exhausted")
    assert (failure.error_type, failure.error) == ("ValueError", "the mirror is read-only")


def test_events_about_one_memory_are_applied_in_the_order_received(
    receiver: Receiver, client: Callable[[bytes], str]
) -> None:
    applied: list[tuple[str, str]] = []
    failed_once: set[str] = set()
    lock = threading.Lock()

    @receiver.on("memory_add", "memory_update", "memory_delete", min_backoff=500, max_backoff=600)
    def mirror(event: MemoryEvent) -> None:
        # The add of m1 fails once and is retried half a second later: its
        # update and delete must wait for it, while events about m2 go ahead.
        if event.memory_id == "m1" and event.event_type == "memory_add" and "m1" not in failed_once:
            failed_once.add("m1")
            raise RuntimeError("first try fails")
        with lock:
            applied.append((event.memory_id or "", event.event_type))

    client(make_body("memory_add", memory_id="m1", memory="v1"))
    client(make_body("memory_update", memory_id="m1", memory="v2"))
    client(make_body("memory_delete", memory_id="m1"))
    client(make_body("memory_add", memory_id="m2", memory="w1"))
    wait_until(lambda: len(applied) == 4)
    m1 = [event_type for memory_id, event_type in applied if memory_id == "m1"]
    assert m1 == ["memory_add", "memory_update", "memory_delete"]
    assert applied.index(("m2", "memory_add")) < applied.index(("m1", "memory_add"))


def redelivery(receiver: Receiver, body: bytes, *, delivery_id: str, key: str) -> None:
    """The event reaching the worker again, as after a crash between the handler's
    success and the acknowledgement: another message with the given idempotency key.
    Order is left out so that only the key can stop it."""
    delivery = Delivery(delivery_id=delivery_id, received_at=utcnow(), idempotency_key=key)
    event = parse_event(body, delivery=delivery)
    (handler,) = receiver.handlers
    message = encode_message(handler, event.model_dump_json(), memory_id=None).to_message()
    receiver.broker.enqueue(message)


def test_a_redelivered_event_whose_handler_succeeded_does_not_run_it_again(
    receiver: Receiver, client: Callable[[bytes], str]
) -> None:
    runs: list[str] = []

    @receiver.on("memory_update")
    def sync(event: MemoryEvent) -> None:
        runs.append(event.delivery.delivery_id)

    body = make_body("memory_update", memory_id="m3")
    first = client(body)
    wait_until(lambda: len(runs) == 1)
    key = "body:" + hashlib.sha256(body).hexdigest()
    redelivery(receiver, body, delivery_id="redelivery", key=key)
    redelivery(receiver, body, delivery_id="control", key="another-event")
    wait_until(lambda: len(runs) == 2)
    time.sleep(0.3)
    assert runs == [first, "control"]


# The gate that keeps a crash from being blamed on bystanders


def counted(client: redis.Redis) -> dict[str, int]:
    """Runs counted and not ended, by message: what a crash now would count against."""
    counts = {key.decode(): int(client.get(key) or 0) for key in client.keys("*:attempts:*")}
    return {key.rsplit(":", 1)[-1]: n for key, n in counts.items() if n}


def guarded_message(name: str) -> dramatiq.Message[Any]:
    delivery = {"delivery_id": name, "received_at": "2026-12-03T00:00:00Z", "idempotency_key": name}
    options = {"redis_message_id": name, EVENT: {"delivery": delivery}}
    return dramatiq.Message(
        queue_name="mem0",
        actor_name="mem0_receiver.app.mirror",
        args=(),
        kwargs={},
        options=options,
    )


class Run(threading.Thread):
    """One worker thread's run of ``message`` through the guard, held until released."""

    def __init__(self, guard: DeliveryGuard, message: dramatiq.Message[Any]) -> None:
        super().__init__(daemon=True)
        self.guard, self.message = guard, message
        self.started, self.release = threading.Event(), threading.Event()

    def run(self) -> None:
        broker = StubBroker()
        self.guard.before_process_message(broker, self.message)
        self.started.set()
        self.release.wait(10)
        self.guard.after_process_message(broker, self.message)


@pytest.fixture
def state(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def tracker(redis_url: str) -> Iterator[RedisTracker]:
    tracker = RedisTracker(redis_url, timeout=5)
    yield tracker
    tracker.close()


def test_while_a_suspect_of_a_crash_runs_no_other_run_is_counted(
    state: redis.Redis, tracker: RedisTracker
) -> None:
    guard = DeliveryGuard(tracker=tracker, failures=RedisFailureStore(state))
    # The suspect was running when its process died: counted once, never ended.
    tracker.begin("mem0_receiver:attempts:suspect", "done", None)
    first, suspect, second = (
        Run(guard, guarded_message(name)) for name in ("first", "suspect", "second")
    )

    first.start()
    assert first.started.wait(5)
    suspect.start()
    # The suspect waits for the first run to end, and is not counted meanwhile.
    wait_until(lambda: guard._gate._waiting == 1)
    assert counted(state) == {"first": 1, "suspect": 1}
    second.start()
    time.sleep(0.2)
    # A run that comes while the suspect waits waits too, without being counted.
    assert not suspect.started.is_set() and not second.started.is_set()
    assert counted(state) == {"first": 1, "suspect": 1}

    first.release.set()
    assert suspect.started.wait(5)
    time.sleep(0.2)
    # The suspect runs alone: a crash now would count against it only.
    assert not second.started.is_set()
    assert counted(state) == {"suspect": 2}

    suspect.release.set()
    assert second.started.wait(5)
    assert counted(state) == {"second": 1}
    second.release.set()
    for run in (first, suspect, second):
        run.join(5)
    assert counted(state) == {}
