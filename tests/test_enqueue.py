"""The enqueue path against a real Redis: layout, atomic dedupe, group commit, recovery."""

from __future__ import annotations

import asyncio
import json

import dramatiq
import pytest
from conftest import RedisServer
from dramatiq.brokers.stub import StubBroker

from mem0_receiver.enqueue import BrokerEnqueuer, RedisEnqueuer
from mem0_receiver.errors import BrokerUnavailable
from mem0_receiver.registry import Handler
from mem0_receiver.worker import Outgoing, encode_message


def message(n: int, queue: str = "mem0", memory_id: str | None = None) -> Outgoing:
    handler = Handler(
        name="h", fn=lambda event: None, event_types=frozenset({"*"}), queue_name=queue
    )
    return encode_message(handler, json.dumps({"n": n}), memory_id)


def test_messages_land_in_dramatiqs_redis_layout(redis_server: RedisServer, redis_url: str) -> None:
    async def scenario() -> None:
        enqueuer = RedisEnqueuer(redis_url, timeout=1, dedupe_window=60)
        assert await enqueuer.enqueue("k1", "d1", [message(1), message(2, "sync")]) is None
        await enqueuer.aclose()

    asyncio.run(scenario())
    client = redis_server.client()
    (redis_id,) = client.lrange("dramatiq:mem0", 0, -1)
    stored = dramatiq.Message.decode(client.hget("dramatiq:mem0.msgs", redis_id))
    assert stored.options["redis_message_id"] == redis_id.decode()
    assert stored.options["mem0_event"] == {"n": 1}
    assert (stored.actor_name, stored.queue_name) == ("mem0_receiver.h", "mem0")
    assert client.llen("dramatiq:sync") == 1
    assert 59_000 < client.pttl("dramatiq:dedupe:k1") <= 60_000


def test_concurrent_requests_share_one_pipeline_but_get_their_own_answers(
    redis_server: RedisServer, redis_url: str
) -> None:
    async def scenario() -> list[str | None]:
        enqueuer = RedisEnqueuer(redis_url, timeout=1, dedupe_window=60, lanes=4)
        calls = [enqueuer.enqueue(f"k{i % 50}", f"d{i}", [message(i)]) for i in range(100)]
        results = await asyncio.gather(*calls)
        await enqueuer.aclose()
        return results

    client = redis_server.client()
    before = int(client.info("stats")["total_connections_received"])
    results = asyncio.run(scenario())
    connections = int(client.info("stats")["total_connections_received"]) - before
    assert results[:50] == [None] * 50
    assert results[50:] == [f"d{i}" for i in range(50)]  # duplicates name the first delivery
    assert client.llen("dramatiq:mem0") == 50
    assert connections <= 4  # a pipeline per lane, not a connection per request


def test_enqueue_survives_redis_forgetting_the_script(
    redis_server: RedisServer, redis_url: str
) -> None:
    async def scenario() -> None:
        enqueuer = RedisEnqueuer(redis_url, timeout=1, dedupe_window=60)
        await enqueuer.enqueue("a", "d1", [message(1)])
        redis_server.client().script_flush()
        assert await enqueuer.enqueue("b", "d2", [message(2)]) is None
        await enqueuer.aclose()

    asyncio.run(scenario())
    assert redis_server.client().llen("dramatiq:mem0") == 2


def test_events_about_a_memory_are_numbered_in_the_order_received(
    redis_server: RedisServer, redis_url: str
) -> None:
    async def scenario() -> None:
        enqueuer = RedisEnqueuer(redis_url, timeout=1, dedupe_window=60)
        for n in range(3):
            await enqueuer.enqueue(f"k{n}", f"d{n}", [message(n, memory_id="m1")])
        await enqueuer.enqueue("k9", "d9", [message(9, memory_id="m2")])
        await enqueuer.aclose()

    asyncio.run(scenario())
    client = redis_server.client()
    ids = client.lrange("dramatiq:mem0", 0, -1)
    stored = [dramatiq.Message.decode(client.hget("dramatiq:mem0.msgs", i)) for i in ids]
    assert [(m.options["mem0_event"]["n"], m.options["mem0_seq"]) for m in stored] == [
        (0, 1),
        (1, 2),
        (2, 3),
        (9, 1),
    ]
    assert client.hget("mem0_receiver:order:mem0_receiver.h:m1", "seq") == b"3"


def test_unreachable_redis_raises_broker_unavailable_and_writes_nothing(make_redis: object) -> None:
    server: RedisServer = make_redis()  # type: ignore[operator]
    url = server.url
    server.stop()

    async def scenario() -> None:
        enqueuer = RedisEnqueuer(url, timeout=0.5, dedupe_window=60)
        with pytest.raises(BrokerUnavailable, match="Redis did not take the message"):
            await enqueuer.enqueue("k", "d", [message(1)])
        assert await enqueuer.ping() is False
        await enqueuer.aclose()

    asyncio.run(scenario())


def test_broker_enqueuer_forgets_a_delivery_the_broker_refused() -> None:
    broker = StubBroker()  # "mem0" is not declared, so the first enqueue fails

    async def scenario() -> None:
        enqueuer = BrokerEnqueuer(broker, timeout=1, dedupe_window=60)
        with pytest.raises(BrokerUnavailable):
            await enqueuer.enqueue("k", "d1", [message(1)])
        broker.declare_queue("mem0")
        assert await enqueuer.enqueue("k", "d2", [message(1)]) is None
        assert await enqueuer.enqueue("k", "d3", [message(1)]) == "d2"

    asyncio.run(scenario())
    assert broker.queues["mem0"].qsize() == 1
