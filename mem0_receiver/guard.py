"""dramatiq middleware that turns "at least once" into the promises in the README.

For every message of a mem0-receiver handler:

* **poison pills**: runs are counted before the handler starts; a message
  whose runs keep killing their process (out of memory, a segfault) goes to
  the failure store after ``crash_limit`` runs instead of looping forever,
  since dramatiq's retry counting never sees an exception in that case. A
  message that was in flight during a crash runs alone in its process next
  time, so that only the culprit's count grows;
* **completed work is not repeated**: a redelivered message whose handler
  already succeeded is skipped (keyed by handler and idempotency key);
* **per-memory order**: the receiver numbers each handler's messages per
  memory; a message runs only after its predecessor finished (or failed for
  good), and an older one that arrives late is dropped;
* **nothing falls through**: exhausted retries land in the failure store, and
  :class:`DurableRetries` keeps trying to enqueue a retry while Redis is down
  instead of dropping the message as dramatiq's Retries does (dramatiq
  pull request #545).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import dramatiq
import redis
from dramatiq.middleware import Middleware, Retries, SkipMessage

from .failures import Failure, FailureStore
from .janitor import Janitor
from .tracking import Outcome, Tracker
from .worker import EVENT

__all__ = ["DEFAULT_CRASH_LIMIT", "DeliveryGuard", "DurableRetries"]

logger = logging.getLogger("mem0_receiver.worker")

#: Runs that kill their process before a message goes to the failure store.
DEFAULT_CRASH_LIMIT = 3
ACTOR_PREFIX = "mem0_receiver."
NAMESPACE = "mem0_receiver"
T = TypeVar("T")


def stubbornly(what: str, call: Callable[[], T]) -> T:
    """Call until it succeeds: while the broker is down, the message stays unacknowledged."""
    delay = 0.1
    while True:
        try:
            return call()
        except Exception as exc:
            logger.warning(
                "Could not %s (%s); trying again in %.1fs.", what, type(exc).__name__, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class _StubbornBroker:
    """The broker as dramatiq's Retries sees it, with an enqueue that does not give up."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        return stubbornly("enqueue a retry", lambda: self._broker.enqueue(message, delay=delay))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)


class DurableRetries(Retries):
    """dramatiq's Retries, except that a failed retry enqueue is tried again, not dropped."""

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        super().after_process_message(  # type: ignore[no-untyped-call]
            _StubbornBroker(broker), message, result=result, exception=exception
        )


class _Gate:
    """Shared entry for ordinary runs, exclusive entry for suspects of a crash.

    A suspect waiting for exclusive entry goes first: ordinary runs wait for
    it, so that a steady stream of them cannot keep it waiting for ever.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0
        #: Per thread: "shared" or "exclusive" while it holds the gate.
        self._held = threading.local()

    def enter(self, *, exclusive: bool) -> None:
        with self._condition:
            if exclusive:
                self._waiting += 1
                self._condition.wait_for(lambda: not self._exclusive and self._shared == 0)
                self._waiting -= 1
                self._exclusive = True
            else:
                self._condition.wait_for(lambda: not self._exclusive and not self._waiting)
                self._shared += 1
            self._held.mode = "exclusive" if exclusive else "shared"

    def leave(self) -> None:
        """Leave, if this thread holds the gate (a run may end before it entered)."""
        mode = getattr(self._held, "mode", None)
        if mode is None:
            return
        self._held.mode = None
        with self._condition:
            if mode == "exclusive":
                self._exclusive = False
            else:
                self._shared -= 1
            self._condition.notify_all()


class DeliveryGuard(Middleware):
    """Attempts, completed work, order and failures for mem0-receiver's actors."""

    def __init__(
        self,
        *,
        tracker: Tracker,
        failures: FailureStore,
        state: redis.Redis | None = None,
        crash_limit: int = DEFAULT_CRASH_LIMIT,
    ) -> None:
        self.tracker = tracker
        self.failures = failures
        #: The Redis holding the handlers' state, if any (for start-up checks).
        self.state = state
        self.crash_limit = crash_limit
        #: Called with (handler, outcome) when a run ends; metrics.py counts them.
        self.on_outcome: Callable[[str, str], None] | None = None
        self._janitor: Janitor | None = None
        self._gate = _Gate()
        #: Redis ids of the messages being run now (the janitor must not reclaim them).
        self._running: set[str] = set()

    # Keys ---------------------------------------------------------------

    @staticmethod
    def _attempt_key(message: Any) -> str:
        return f"{NAMESPACE}:attempts:{message.options.get('redis_message_id', message.message_id)}"

    @staticmethod
    def _done_key(message: Any) -> str:
        event = message.options.get(EVENT, {})
        key = event.get("delivery", {}).get("idempotency_key") or message.message_id
        return f"{NAMESPACE}:done:{message.actor_name}:{key}"

    # Hooks --------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if not message.actor_name.startswith(ACTOR_PREFIX):
            return
        options = message.options
        self._running.add(options.get("redis_message_id", ""))
        order_key = options.get("mem0_order")
        seq = options.get("mem0_seq") if isinstance(options.get("mem0_seq"), int) else None
        attempt_key = self._attempt_key(message)
        done_key = self._done_key(message)
        # In before the run is counted: while a suspect of a crash runs alone,
        # no other run is counted, so that a crash counts against it only.
        self._gate.enter(exclusive=False)
        # Until Redis answers: an exception here would make dramatiq log it and
        # run the handler anyway, without any of the checks below.
        state = stubbornly(
            "start a run", lambda: self.tracker.begin(attempt_key, done_key, order_key)
        )

        if state.done:
            self._end(attempt_key, message, status="skipped")
            logger.info(
                "Skipping %s for delivery %s: already done.",
                message.actor_name,
                self._delivery(message),
            )
            raise SkipMessage
        if order_key and seq and not options.get("mem0_replay"):
            if state.applied >= seq:
                self._end(attempt_key, message, status="skipped")
                logger.info(
                    "Skipping %s #%d for a memory: a later event was applied.",
                    message.actor_name,
                    seq,
                )
                raise SkipMessage
            if state.applied < seq - 1:
                self._end(attempt_key, message)
                self._wait_for_predecessor(broker, message)
                raise SkipMessage
        if state.attempts > self.crash_limit:
            self._give_up(message, reason="worker crashed", attempts=state.attempts - 1)
            raise SkipMessage
        if state.attempts > 1:
            # It was running when its process died: the culprit or a bystander.
            # It runs alone in this process from now on, so that a crash counts
            # against it only, and it is not counted while it waits its turn.
            stubbornly("uncount a waiting run", lambda: self.tracker.uncount(attempt_key))
            self._gate.leave()
            self._gate.enter(exclusive=True)
            stubbornly("count a run", lambda: self.tracker.count(attempt_key))

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._gate.leave()
        self._running.discard(message.options.get("redis_message_id", ""))

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if not message.actor_name.startswith(ACTOR_PREFIX):
            return
        # The run's end is recorded before the gate opens to a suspect, which
        # may crash the process: this run must not be blamed for that.
        try:
            if exception is None:
                self._end(self._attempt_key(message), message, status="ok", done=True)
            elif message.failed:
                attempts = int(message.options.get("retries", 0))
                self._give_up(
                    message, reason="retries exhausted", attempts=attempts, exception=exception
                )
            else:
                # Retries has enqueued the next attempt.
                self._end(self._attempt_key(message), message, status="retrying")
        finally:
            self._gate.leave()
            self._running.discard(message.options.get("redis_message_id", ""))

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        from dramatiq.brokers.redis import RedisBroker

        if isinstance(broker, RedisBroker):
            self._janitor = Janitor(broker, worker=worker, running=self._running)
            self._janitor.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._janitor is not None:
            self._janitor.stop()
            self._janitor = None

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.tracker.close()

    # Helpers ------------------------------------------------------------

    @staticmethod
    def _delivery(message: Any) -> str:
        return str(message.options.get(EVENT, {}).get("delivery", {}).get("delivery_id", "-"))

    def _end(
        self, attempt_key: str, message: Any, *, status: str | None = None, done: bool = False
    ) -> None:
        """End a run: forget the attempt, record the outcome; on ``done`` (or a
        final failure) mark the work done and move the memory's order past it."""
        options = message.options
        order_key = seq = None
        if done or status in ("failed", "crashed"):
            order_key, seq = options.get("mem0_order"), options.get("mem0_seq")
        done_key = self._done_key(message) if done else None
        outcome = self._outcome(message, status) if status else None
        stubbornly(
            "record the end of a run",
            lambda: self.tracker.end(
                attempt_key, done_key=done_key, order_key=order_key, seq=seq, outcome=outcome
            ),
        )
        if status and self.on_outcome is not None:
            self.on_outcome(message.actor_name[len(ACTOR_PREFIX) :], status)

    @staticmethod
    def _outcome(message: Any, status: str) -> Outcome | None:
        event = message.options.get(EVENT, {})
        delivery = event.get("delivery", {})
        if not delivery.get("delivery_id"):
            return None
        received = delivery.get("received_at", "")
        try:
            received_at = datetime.fromisoformat(received.replace("Z", "+00:00")).timestamp()
        except (AttributeError, ValueError):
            received_at = time.time()
        return Outcome(
            delivery_id=str(delivery["delivery_id"]),
            handler=message.actor_name[len(ACTOR_PREFIX) :],
            status=status,
            event_type=str(event.get("event_type", "")),
            memory_id=event.get("memory_id"),
            received_at=received_at,
        )

    def _give_up(
        self, message: Any, *, reason: str, attempts: int, exception: BaseException | None = None
    ) -> None:
        handler = message.actor_name[len(ACTOR_PREFIX) :]
        failure = Failure.from_message(
            message.asdict(), handler=handler, reason=reason, attempts=attempts, exception=exception
        )
        stubbornly("store a failed event", lambda: self.failures.add(failure))
        # Later events about the memory need not wait for this one any more.
        status = "crashed" if reason == "worker crashed" else "failed"
        self._end(self._attempt_key(message), message, status=status)
        logger.error(
            "Handler %s gave up on delivery %s (event %s, memory %s) after %d attempt(s): %s, %s.",
            handler,
            failure.delivery_id,
            failure.event_type,
            failure.memory_id,
            attempts,
            reason,
            failure.error_type or "no exception",
        )

    def _wait_for_predecessor(self, broker: dramatiq.Broker, message: Any) -> None:
        waits = int(message.options.get("mem0_waits", 0))
        delay = min(50 * 2**waits, 2_000)
        retry = message.copy(options={"mem0_waits": waits + 1})
        stubbornly(
            "requeue an event that waits for an earlier one",
            lambda: broker.enqueue(retry, delay=delay),
        )
