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
"""

from __future__ import annotations

import logging
import threading

from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

__all__ = ["DEFAULT_JANITOR_INTERVAL", "Janitor"]

logger = logging.getLogger("mem0_receiver.janitor")

#: Seconds between heartbeats and maintenance passes.
DEFAULT_JANITOR_INTERVAL = 2.0


class Janitor(threading.Thread):
    def __init__(self, broker: RedisBroker, *, interval: float = DEFAULT_JANITOR_INTERVAL) -> None:
        super().__init__(name="mem0-receiver-janitor", daemon=True)
        self.broker = broker
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.sweep()
            except Exception as exc:  # Redis down: try again next time.
                logger.warning("Heartbeat and maintenance failed: %s", type(exc).__name__)

    def sweep(self) -> None:
        broker = self.broker
        queues = broker.get_declared_queues() | broker.get_declared_delay_queues()
        dispatch = broker.scripts["dispatch"]
        for queue_name in sorted(queues):
            # The "qsize" command changes nothing; do_maintenance=1 makes the
            # script refresh our heartbeat and requeue dead workers' messages
            # (dramatiq/brokers/redis/dispatch.lua).
            dispatch(
                keys=[broker.namespace],
                args=[
                    "qsize",
                    current_millis(),
                    queue_name,
                    broker.broker_id,
                    broker.heartbeat_timeout,
                    broker.dead_message_ttl,
                    1,
                    broker._max_unpack_size(),  # type: ignore[no-untyped-call]
                ],
            )

    def stop(self) -> None:
        self.stopped.set()
