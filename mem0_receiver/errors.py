"""Exceptions raised by mem0-receiver.

The hierarchy::

    Mem0ReceiverError
    ├── ConfigurationError      a mistake in settings, a decorator or a command line
    ├── VerificationError       a request that does not prove where it came from
    ├── PayloadError            a body that is not a Mem0 event
    └── EnqueueError            the broker did not take the message in time
        └── BrokerUnavailable   the broker could not be reached at all

Messages are full sentences that say what to do. None of them ever contains a
secret, a token, a signature or memory text.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "ConfigurationError",
    "EnqueueError",
    "Mem0ReceiverError",
    "PayloadError",
    "VerificationError",
]


class Mem0ReceiverError(Exception):
    """Base class for every error raised by mem0-receiver."""


class ConfigurationError(Mem0ReceiverError):
    """Raised when settings, a handler registration or a command line are wrong."""


class VerificationError(Mem0ReceiverError):
    """Raised when a request carries no valid token or signature."""


class PayloadError(Mem0ReceiverError):
    """Raised when a body is not JSON, not an object, or not a Mem0 event."""

    def __init__(self, message: str, *, status: str = "invalid") -> None:
        super().__init__(message)
        #: "malformed" for bodies that are not a JSON object, "invalid" for
        #: JSON objects that are not a Mem0 event. The HTTP edge maps these
        #: to 400 and 422.
        self.status = status


class EnqueueError(Mem0ReceiverError):
    """Raised when the broker does not confirm a message within the deadline."""


class BrokerUnavailable(EnqueueError):
    """Raised when the broker cannot be reached at all."""
