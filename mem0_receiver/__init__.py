"""mem0-receiver: receive Mem0 webhooks, acknowledge after a durable enqueue, handle on workers."""

from __future__ import annotations

from .errors import (
    BrokerUnavailable,
    ConfigurationError,
    EnqueueError,
    Mem0ReceiverError,
    PayloadError,
    VerificationError,
)
from .events import (
    EVENT_TYPES,
    Delivery,
    IngestJobCancelled,
    IngestJobCompleted,
    IngestJobEvent,
    IngestJobFailed,
    IngestJobPartiallyCompleted,
    MemoryAdded,
    MemoryCategorized,
    MemoryChanged,
    MemoryDeleted,
    MemoryEvent,
    MemoryUpdated,
    UnknownEvent,
    parse_event,
)
from .receiver import Receiver
from .registry import Handler

__version__ = "0.1.0"

__all__ = [
    # The receiver
    "Handler",
    "Receiver",
    # Events
    "EVENT_TYPES",
    "Delivery",
    "IngestJobCancelled",
    "IngestJobCompleted",
    "IngestJobEvent",
    "IngestJobFailed",
    "IngestJobPartiallyCompleted",
    "MemoryAdded",
    "MemoryCategorized",
    "MemoryChanged",
    "MemoryDeleted",
    "MemoryEvent",
    "MemoryUpdated",
    "UnknownEvent",
    "parse_event",
    # Errors
    "BrokerUnavailable",
    "ConfigurationError",
    "EnqueueError",
    "Mem0ReceiverError",
    "PayloadError",
    "VerificationError",
]
