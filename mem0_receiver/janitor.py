"""A thread in each Redis worker that keeps its heartbeat fresh and reclaims dead workers' messages.

dramatiq's Redis broker hands a dead worker's unacknowledged messages to
others only when (a) the worker's heartbeat is older than
``heartbeat_timeout`` and (b) a maintenance pass runs, which dramatiq
triggers on about one broker call in a thousand (dramatiq/brokers/redis.py,
``DEFAULT_MAINTENANCE_CHANCE``). Heartbeats are refreshed only by broker
calls, so a worker whose threads are all busy with long handlers stops
heartbeating and can have its messages handed out again while it runs them.

This thread fixes both: it refreshes the heartbeat every ``interval`` seconds
whatever the handlers are doing, and runs maintenance on every queue as often,
so a killed worker's messages run again within about ``heartbeat_timeout +
interval``.

It also reclaims this worker's own orphans. dramatiq's fetch script moves
message ids into the worker's acknowledgement set in Redis; when its reply is
lost (Redis froze past the socket timeout, or died after running the script),
the consumer starts again with an empty cache and nobody holds those ids,
while the live worker's heartbeat keeps maintenance from handing them out
(dramatiq issue #894). Ids in our sets that no part of this worker holds (its
work queue, delay queues, consumer caches, running handlers) for two sweeps
in a row are put back on their queue.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

__all__ = ["DEFAULT_JANITOR_INTERVAL", "Janitor"]

logger = logging.getLogger("mem0_receiver.janitor")

#: Seconds between heartbeats and maintenance passes.
DEFAULT_JANITOR_INTERVAL = 2.0


class Janitor(threading.Thread):
    def __init__(
        self,
        broker: RedisBroker,
        *,
        worker: dramatiq.Worker | None = None,
        running: set[str] | None = None,
        interval: float = DEFAULT_JANITOR_INTERVAL,
    ) -> None:
        super().__init__(name="mem0-receiver-janitor", daemon=True)
        self.broker = broker
        self.worker = worker
        #: Redis ids of the messages this worker's threads are running now.
        self.running = running if running is not None else set()
        self.interval = interval
        self.stopped = threading.Event()
        self._suspects: set[tuple[str, bytes]] = set()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.sweep()
            except Exception as exc:  # Redis down: try again next time.
                logger.warning("Heartbeat and maintenance failed: %s", type(exc).__name__)

    def sweep(self) -> None:
        broker = self.broker
        queues = broker.get_declared_queues() | broker.get_declared_delay_queues()
        for queue_name in sorted(queues):
            # The "qsize" command changes nothing; do_maintenance=1 makes the
            # script refresh our heartbeat and requeue dead workers' messages
            # (dramatiq/brokers/redis/dispatch.lua).
            self._dispatch("qsize", queue_name, maintenance=True)
        if self.worker is not None:
            self.reclaim_orphans(sorted(queues))

    def _dispatch(
        self, command: str, queue_name: str, *args: Any, maintenance: bool = False
    ) -> Any:
        broker = self.broker
        return broker.scripts["dispatch"](
            keys=[broker.namespace],
            args=[
                command,
                current_millis(),
                queue_name,
                broker.broker_id,
                broker.heartbeat_timeout,
                broker.dead_message_ttl,
                int(maintenance),
                broker._max_unpack_size(),  # type: ignore[no-untyped-call]
                *args,
            ],
        )

    def reclaim_orphans(self, queues: list[str]) -> None:
        acks = f"{self.broker.namespace}:__acks__.{self.broker.broker_id}."
        pipe = self.broker.client.pipeline(transaction=False)
        for queue_name in queues:
            pipe.smembers(acks + queue_name)
        members = pipe.execute()
        held = self._held()
        orphans = {
            (queue_name, redis_id)
            for queue_name, ids in zip(queues, members, strict=True)
            for redis_id in ids
            if redis_id.decode() not in held
        }
        for queue_name, redis_id in orphans & self._suspects:
            logger.warning(
                "Requeueing message %s that this worker fetched but lost.", redis_id.decode()
            )
            # "requeue" moves it back only if it is still in our set: a message
            # acknowledged meanwhile stays acknowledged.
            self._dispatch("requeue", queue_name, redis_id)
        self._suspects = orphans - self._suspects

    def _held(self) -> set[str]:
        """Redis ids of every message some part of this worker holds."""
        held = set(self.running)
        worker = self.worker
        assert worker is not None
        items = list(worker.work_queue.queue)
        for thread in list(worker.consumers.values()):
            items += list(thread.delay_queue.queue)
            for data in list(getattr(thread.consumer, "message_cache", None) or ()):
                try:
                    held.add(json.loads(data)["options"]["redis_message_id"])
                except (ValueError, KeyError, TypeError):
                    continue
        for item in items:
            redis_id = item.message.options.get("redis_message_id")
            if redis_id:
                held.add(redis_id)
        return held

    def stop(self) -> None:
        self.stopped.set()
