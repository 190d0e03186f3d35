"""Building the dramatiq broker that workers consume from, from a URL.

``redis://`` and ``rediss://`` give dramatiq's Redis broker with short socket
timeouts; no URL gives dramatiq's in-memory ``StubBroker``, which keeps nothing
across a restart and is for development only.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, urlsplit

import dramatiq
import redis
from dramatiq.asyncio import EventLoopThread, set_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO, CurrentMessage, Retries

from .errors import ConfigurationError
from .failures import FailureStore, MemoryFailureStore, RedisFailureStore
from .guard import DeliveryGuard, DurableRetries
from .rabbitmq import RABBITMQ_SCHEMES, build_rabbitmq_broker
from .tracking import MemoryTracker, RedisTracker, Tracker

__all__ = [
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "REDIS_SCHEMES",
    "build_broker",
    "check_broker",
    "durability_problems",
    "failure_store",
    "is_durable",
    "redact",
    "state_client",
]

logger = logging.getLogger("mem0_receiver")

REDIS_SCHEMES = ("redis", "rediss", "unix")
#: Seconds to wait for Redis to accept a connection or answer a command.
#: redis-py waits forever by default; a frozen Redis would then hang workers
#: and, through them, requests.
DEFAULT_SOCKET_TIMEOUT = 5.0
#: Milliseconds without a heartbeat after which a worker's unacknowledged
#: messages go to others (dramatiq's default is 60 000). Safe this short
#: because the janitor heartbeats every two seconds even while handlers run.
DEFAULT_HEARTBEAT_TIMEOUT = 10_000


def redact(url: str | None) -> str:
    """The URL without its password, for logs and messages."""
    if not url:
        return "in-memory"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:***@" if parts.password else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


class DaemonAsyncIO(AsyncIO):
    """dramatiq's AsyncIO middleware, with its event-loop thread a daemon.

    A worker process that gets a second SIGTERM (systemd's default
    KillMode=control-group sends one to every process, and dramatiq's main
    process forwards its own) exits through ``sys.exit()`` without stopping the
    worker (dramatiq/cli.py, ``worker_process``); Python then waits for every
    non-daemon thread, and dramatiq's loop thread never ends: the process hung.
    Its unacknowledged messages are redelivered as for any killed worker.
    """

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        thread = EventLoopThread(self.logger)
        thread.daemon = True
        thread.start(timeout=1.0)
        set_event_loop_thread(thread)


def _redis_client(url: str, what: str) -> redis.Redis:
    try:
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=DEFAULT_SOCKET_TIMEOUT,
            socket_timeout=DEFAULT_SOCKET_TIMEOUT,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigurationError(f"{what} {redact(url)} is not a valid Redis URL: {exc}.") from None


def _equip(broker: dramatiq.Broker, state_url: str | None = None) -> dramatiq.Broker:
    """Add the middleware our handlers rely on to any dramatiq broker (once).

    Their state lives in the broker's own Redis, or in the Redis at
    ``state_url`` for other brokers (RabbitMQ), or in memory for the
    in-memory broker.
    """
    if any(isinstance(m, DeliveryGuard) for m in broker.middleware):
        return broker
    # Async handlers run on the event-loop thread that dramatiq's AsyncIO
    # middleware starts (dramatiq/asyncio.py); without it they fail at run time.
    if not any(isinstance(m, AsyncIO) for m in broker.middleware):
        broker.add_middleware(DaemonAsyncIO())
    # Handlers read their event from the current message (worker.py says why).
    if not any(isinstance(m, CurrentMessage) for m in broker.middleware):
        broker.add_middleware(CurrentMessage())
    for index, middleware in enumerate(broker.middleware):
        if type(middleware) is Retries:
            durable = DurableRetries(
                max_retries=middleware.max_retries,
                min_backoff=middleware.min_backoff,
                max_backoff=middleware.max_backoff,
                retry_when=middleware.retry_when,
            )
            broker.middleware[index] = durable
    state: redis.Redis | None = None
    if isinstance(broker, RedisBroker):
        state, state_url = broker.client, _url_of(broker.client)
    elif state_url:
        state = _redis_client(state_url, "MEM0_RECEIVER_STATE_URL")
    elif not isinstance(broker, StubBroker):
        raise ConfigurationError(
            f"A {type(broker).__name__} needs a Redis for dedupe, per-memory order and the "
            "failure store: set MEM0_RECEIVER_STATE_URL=redis://host:6379/0."
        )
    if state is not None and state_url:
        tracker: Tracker = RedisTracker(state_url, timeout=DEFAULT_SOCKET_TIMEOUT)
        failures: FailureStore = RedisFailureStore(state)
    else:
        tracker, failures = MemoryTracker(), MemoryFailureStore()
    # Before Retries in the list, so that its after_process_message runs after
    # Retries' (dramatiq calls "after" hooks in reverse) and sees message.failed.
    guard = DeliveryGuard(tracker=tracker, failures=failures, state=state)
    broker.add_middleware(guard, before=DurableRetries)
    return broker


def _url_of(client: redis.Redis) -> str:
    """A URL for the server a redis-py client talks to (for our own connections)."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    scheme = "rediss" if client.connection_pool.connection_class is redis.SSLConnection else "redis"
    user = quote(kwargs.get("username") or "", safe="")
    password = quote(kwargs.get("password") or "", safe="")
    auth = f"{user}:{password}@" if password else ""
    host, port, db = kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    return f"{scheme}://{auth}{host}:{port}/{db}"


def failure_store(broker: dramatiq.Broker) -> FailureStore:
    """The failure store of a broker prepared by this module."""
    for middleware in broker.middleware:
        if isinstance(middleware, DeliveryGuard):
            return middleware.failures
    raise ConfigurationError("This broker was not prepared by mem0-receiver.")


def build_broker(url: str | None, state_url: str | None = None) -> dramatiq.Broker:
    """A dramatiq broker for ``url``, or a ConfigurationError naming the fix."""
    if not url:
        return _equip(StubBroker())
    scheme = urlsplit(url).scheme
    if scheme in RABBITMQ_SCHEMES:
        return _equip(build_rabbitmq_broker(url), state_url)
    if scheme in REDIS_SCHEMES:
        client = _redis_client(url, "The broker URL")
        broker = RedisBroker(  # type: ignore[no-untyped-call]
            client=client,
            heartbeat_timeout=DEFAULT_HEARTBEAT_TIMEOUT,
            # The janitor (janitor.py) runs maintenance every two seconds.
            maintenance_chance=0,
        )
        return _equip(broker)
    raise ConfigurationError(
        f"Unsupported broker URL scheme {scheme!r}; use redis://host:6379/0 or "
        "amqp://host:5672, or leave MEM0_RECEIVER_BROKER_URL unset for the in-memory broker."
    )


def state_client(broker: dramatiq.Broker) -> redis.Redis | None:
    """The Redis that holds the handlers' state (None for the in-memory broker)."""
    return next((m.state for m in broker.middleware if isinstance(m, DeliveryGuard)), None)


def check_broker(broker: dramatiq.Broker, url: str | None) -> None:
    """Raise ConfigurationError, at start-up, if the broker does not answer."""
    if isinstance(broker, StubBroker):
        return
    if not isinstance(broker, RedisBroker):
        try:
            broker.connection  # type: ignore[attr-defined]  # noqa: B018 (RabbitMQ: connects)
        except Exception as exc:
            raise ConfigurationError(
                f"The broker at {redact(url)} does not answer ({type(exc).__name__}); "
                "start RabbitMQ or fix MEM0_RECEIVER_BROKER_URL."
            ) from None
    state = state_client(broker)
    try:
        if state is not None:
            state.ping()
    except (redis.RedisError, OSError) as exc:
        setting = "MEM0_RECEIVER_BROKER_URL"
        if not isinstance(broker, RedisBroker):
            setting = "MEM0_RECEIVER_STATE_URL"
        raise ConfigurationError(
            f"The Redis named by {setting} does not answer ({type(exc).__name__}); "
            f"start Redis or fix {setting}."
        ) from None


def durability_problems(broker: dramatiq.Broker) -> list[str]:
    """What in the Redis settings could lose acknowledged events, one line each."""
    client = state_client(broker)
    if client is None:
        return []
    try:
        config = client.config_get("appendonly")
        config.update(client.config_get("maxmemory*"))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return [
            f"Could not reach Redis to check its persistence settings ({type(exc).__name__}); "
            "requests get 503 until it answers."
        ]
    except redis.ResponseError:
        # Managed services (ElastiCache, Memorystore, Upstash…) often disable CONFIG.
        return [
            "Could not read Redis's persistence settings (CONFIG is not allowed here); make "
            "sure appendonly is yes and maxmemory-policy is noeviction."
        ]
    problems = []
    if config.get("appendonly") != "yes":
        problems.append(
            "Redis has appendonly=no: a crash loses every acknowledged event since the last "
            "snapshot. Fix: CONFIG SET appendonly yes (and set it in redis.conf)."
        )
    policy = config.get("maxmemory-policy", "noeviction")
    if config.get("maxmemory", "0") != "0" and policy != "noeviction":
        problems.append(
            f"Redis has maxmemory-policy={policy}: under memory pressure it may evict queued "
            "events and dedupe keys. Fix: CONFIG SET maxmemory-policy noeviction."
        )
    return problems


def is_durable(broker: dramatiq.Broker) -> bool:
    return not isinstance(broker, StubBroker)


def adopt(broker: dramatiq.Broker, state_url: str | None = None) -> dramatiq.Broker:
    """Prepare a broker the user built themselves."""
    return _equip(broker, state_url)
