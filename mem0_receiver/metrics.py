"""Prometheus metrics, with the ``metrics`` extra (``pip install 'mem0-receiver[metrics]'``).

The receiver's metrics live in a registry of its own (a process may hold many
receivers, as tests do) and are served at ``GET /metrics`` of its app:

* ``mem0_receiver_requests_total{outcome, status}``: every answer to a webhook,
  ``outcome`` being the ``status`` or ``error`` of its JSON body (``queued``,
  ``duplicate``, ``broker_unavailable``…);
* ``mem0_receiver_ack_latency_seconds``: from the request to its 202;
* ``mem0_receiver_schema_drift_total{event_type, kind}``: payloads with fields
  (``kind="field"``) or an event type (``kind="event_type"``) the models do not know.

Workers count ``mem0_receiver_handler_outcomes_total{handler, outcome}`` and
report ``mem0_receiver_failure_store_entries``. Under ``mem0-receiver worker``
they sit beside dramatiq's own Prometheus middleware, which keeps each worker
process's samples in files (prometheus-client's multiprocess mode) and serves
them from one extra process on ``dramatiq_prom_host:dramatiq_prom_port``
(0.0.0.0:9191). A collector cannot run in the worker processes then, so that
extra process is ours (:func:`serve_worker_metrics`): dramatiq's files plus the
failure store's size, read at scrape time.

This module imports prometheus-client, so the rest of the package imports it
only when metrics are on, and the worker command only after it has put
prometheus-client in multiprocess mode (a choice made at its first import).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections.abc import Iterable, Iterator
from http.server import HTTPServer
from typing import Any

import dramatiq
from dramatiq.middleware.prometheus import DB_PATH, HTTP_HOST, HTTP_PORT, Prometheus
from prometheus_client import CollectorRegistry, Counter, Histogram, MetricsHandler
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from .brokers import failure_store
from .config import ENV_PROMETHEUS_DIR
from .failures import FailureStore
from .guard import ACTOR_PREFIX, DeliveryGuard

__all__ = [
    "FailureStoreSize",
    "ReceiverMetrics",
    "WorkerPrometheus",
    "count_outcomes",
    "serve_worker_metrics",
    "watch_workers",
]

logger = logging.getLogger("mem0_receiver")

#: A 202 from a local Redis takes well under a millisecond; the enqueue
#: timeout (2 s by default) bounds the rest.
ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: How a handler's run ended, as DeliveryGuard reports it.
OUTCOMES = ("ok", "retrying", "failed", "crashed", "skipped")


class ReceiverMetrics:
    """The HTTP side's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # uvicorn workers (``serve --workers N``) share one directory; read at
        # start-up, like prometheus-client itself does.
        self.directory = os.environ.get(ENV_PROMETHEUS_DIR)
        self.requests = Counter(
            "mem0_receiver_requests_total",
            "Webhook requests answered, by outcome (the body's status or error) and HTTP status.",
            ["outcome", "status"],
            registry=self.registry,
        )
        self.ack_latency = Histogram(
            "mem0_receiver_ack_latency_seconds",
            "Seconds from a webhook request to its 202 acknowledgement.",
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.drift = Counter(
            "mem0_receiver_schema_drift_total",
            "Payloads carrying fields (kind=field) or an event type (kind=event_type) "
            "that this version does not model.",
            ["event_type", "kind"],
            registry=self.registry,
        )
        # Labelled children, bound once each: the lookup is the costly part.
        self._answers: dict[tuple[str, int], Any] = {}

    def answered(self, outcome: str, status: int) -> None:
        child = self._answers.get((outcome, status))
        if child is None:
            child = self._answers[outcome, status] = self.requests.labels(outcome, str(status))
        child.inc()

    def acknowledged(self, seconds: float) -> None:
        self.ack_latency.observe(seconds)

    def drifted(self, event_type: str, kind: str) -> None:
        self.drift.labels(event_type, kind).inc()

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The text to serve at /metrics, and its content type."""
        registry = self.registry
        if self.directory:
            registry = CollectorRegistry()
            registry.register(ProcessFiles(self.directory))
        encode, content_type = choose_encoder(accept)
        return encode(registry), content_type


class ProcessFiles:
    """A collector: the samples every process wrote to ``path``, merged.

    As prometheus-client's MultiProcessCollector, except that it passes over
    empty files. A process creates its file before it sizes it, so a scrape at
    that moment, or after the process was killed in it, met an empty file and
    failed as a whole (prometheus/client_python#1199): the HTTP server then
    closed the connection without an answer.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        files = []
        for name in glob.glob(os.path.join(self.path, "*.db")):
            with contextlib.suppress(FileNotFoundError):  # A process's file was removed.
                if os.path.getsize(name):
                    files.append(name)
        merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return merged


class FailureStoreSize:
    """A collector: the failure store's size, read when scraped."""

    NAME = "mem0_receiver_failure_store_entries"
    HELP = "Events whose handler gave up, kept in the failure store until replayed or purged."

    def __init__(self, failures: FailureStore) -> None:
        self.failures = failures

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            count = self.failures.count()
        except Exception as exc:  # Redis is down: leave the sample out, keep the rest.
            logger.warning("Could not count the failure store (%s).", type(exc).__name__)
            return
        yield GaugeMetricFamily(self.NAME, self.HELP, value=count)


def _guard(broker: dramatiq.Broker) -> DeliveryGuard:
    return next(m for m in broker.middleware if isinstance(m, DeliveryGuard))


def count_outcomes(broker: dramatiq.Broker, registry: CollectorRegistry) -> None:
    """Count every handler run on ``broker`` by handler and outcome, in ``registry``."""
    outcomes = Counter(
        "mem0_receiver_handler_outcomes_total",
        "Handler runs by how they ended: ok, retrying, failed, crashed or skipped.",
        ["handler", "outcome"],
        registry=registry,
    )
    children: dict[tuple[str, str], Any] = {}
    # Every series from zero, so that rate() and alerts see the first failure.
    for actor_name in broker.get_declared_actors():
        if actor_name.startswith(ACTOR_PREFIX):
            for outcome in OUTCOMES:
                handler = actor_name[len(ACTOR_PREFIX) :]
                children[handler, outcome] = outcomes.labels(handler, outcome)

    def count(handler: str, outcome: str) -> None:
        child = children.get((handler, outcome))
        if child is None:
            child = children[handler, outcome] = outcomes.labels(handler, outcome)
        child.inc()

    _guard(broker).on_outcome = count


def watch_workers(broker: dramatiq.Broker, registry: CollectorRegistry) -> None:
    """Handler outcomes and the failure store's size for workers in this process (``dev``)."""
    count_outcomes(broker, registry)
    registry.register(FailureStoreSize(failure_store(broker)))


class WorkerPrometheus(Prometheus):
    """dramatiq's Prometheus middleware, with handler outcomes and the failure store's size.

    For ``mem0-receiver worker`` only: it needs dramatiq's process boot and its
    fork processes, which an in-process ``dramatiq.Worker`` does not have.
    """

    @property
    def forks(self) -> list[Any]:
        # In place of dramatiq's exposition server, on the same host and port.
        return [serve_worker_metrics]

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        super().after_process_boot(broker)  # type: ignore[no-untyped-call]
        # Its registry only names the metrics: the samples go to DB_PATH's files.
        count_outcomes(broker, CollectorRegistry())


def serve_worker_metrics() -> int:
    """A dramatiq fork process: every worker process's samples, and the failure store's size."""
    from .target import load_receiver
    from .worker import ENV_TARGET

    receiver = load_receiver(os.environ[ENV_TARGET])
    registry = CollectorRegistry()
    registry.register(ProcessFiles(DB_PATH))
    registry.register(FailureStoreSize(failure_store(receiver.broker)))
    server = HTTPServer((HTTP_HOST, HTTP_PORT), MetricsHandler.factory(registry))
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
