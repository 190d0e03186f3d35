"""The registry of handlers: which functions run for which event types, and how.

Everything a user can get wrong in ``@receiver.on(...)`` is checked here, when
the decorator is applied, so that mistakes fail at import with a sentence that
names the fix (as ``dramatiq.actor`` does).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError
from .events import EVENT_TYPES

__all__ = [
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MIN_BACKOFF",
    "DEFAULT_QUEUE_NAME",
    "DEFAULT_TIME_LIMIT",
    "Handler",
    "Registry",
]

#: Retries after the first attempt. dramatiq's default (20, over about a month)
#: suits batch jobs; a webhook handler that still fails after an hour wants a human.
DEFAULT_MAX_RETRIES = 8
#: Backoff bounds in milliseconds; dramatiq doubles the delay on each retry
#: with jitter, so 8 retries wait about 1s, 2s, 4s … 128s: around four minutes in all.
DEFAULT_MIN_BACKOFF = 1_000
DEFAULT_MAX_BACKOFF = 300_000
#: Milliseconds a handler may run before dramatiq interrupts it.
DEFAULT_TIME_LIMIT = 300_000
DEFAULT_QUEUE_NAME = "mem0"
WILDCARD = "*"

OPTIONS = ("max_retries", "min_backoff", "max_backoff", "time_limit", "queue_name", "priority")
# dramatiq's own rule for queue names (dramatiq/actor.py).
_QUEUE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")
_ACTOR_PREFIX = "mem0_receiver."


@dataclass(frozen=True)
class Handler:
    """One registered function and the dramatiq options it runs with."""

    name: str
    fn: Callable[..., Any]
    event_types: frozenset[str]
    max_retries: int = DEFAULT_MAX_RETRIES
    min_backoff: int = DEFAULT_MIN_BACKOFF
    max_backoff: int = DEFAULT_MAX_BACKOFF
    time_limit: int = DEFAULT_TIME_LIMIT
    queue_name: str = DEFAULT_QUEUE_NAME
    priority: int = 0
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.fn))

    @property
    def actor_name(self) -> str:
        return _ACTOR_PREFIX + self.name


def _check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"on() got an unknown option {unknown[0]!r}; the options are {', '.join(OPTIONS)}."
        )
    for key in ("max_retries", "min_backoff", "max_backoff", "time_limit", "priority"):
        value = options.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigurationError(f"on() option {key} must be a whole number >= 0.")
    if options.get("time_limit") == 0:
        raise ConfigurationError("on() option time_limit must be at least 1 millisecond.")
    queue_name = options.get("queue_name", DEFAULT_QUEUE_NAME)
    if not isinstance(queue_name, str) or not _QUEUE_NAME.fullmatch(queue_name):
        raise ConfigurationError(
            f"on() option queue_name {queue_name!r} is not a valid queue name: use letters, "
            "digits, '.', '_' and '-', starting with a letter or '_'."
        )


def _check_function(fn: object) -> None:
    if not callable(fn):
        raise ConfigurationError("on() decorates a function; put @receiver.on(...) above a def.")
    try:
        inspect.signature(fn).bind(object())
    except TypeError:
        name = getattr(fn, "__qualname__", repr(fn))
        raise ConfigurationError(
            f"Handler {name} must accept exactly one argument, the event: def {name}(event): ..."
        ) from None
    except ValueError:  # No signature (a builtin): nothing to check.
        pass


class Registry:
    """The handlers of one receiver, by name, in registration order."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        #: handlers_for's answers, per event type (every request asks).
        self._routes: dict[str, tuple[Handler, ...]] = {}
        self._listeners: list[Callable[[Handler], object]] = []

    def __iter__(self) -> Iterator[Handler]:
        return iter(list(self._handlers.values()))

    def __len__(self) -> int:
        return len(self._handlers)

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def subscribe(self, listener: Callable[[Handler], object]) -> None:
        """Call ``listener`` for every handler, now and when one is added later."""
        self._listeners.append(listener)
        for handler in self._handlers.values():
            listener(handler)

    def add(
        self,
        fn: Callable[..., Any],
        event_types: tuple[str, ...],
        *,
        name: str | None = None,
        **options: Any,
    ) -> Handler:
        """Validate and register ``fn``; every mistake is a ConfigurationError."""
        if not event_types:
            raise ConfigurationError(
                'on() needs at least one event type, e.g. @receiver.on("memory_add"), '
                'or "*" for every event.'
            )
        for event_type in event_types:
            if event_type != WILDCARD and event_type not in EVENT_TYPES:
                raise ConfigurationError(
                    f"Unknown event type {event_type!r}; choose from {', '.join(EVENT_TYPES)}, "
                    'or "*" for every event.'
                )
        _check_options(options)
        _check_function(fn)
        if name is None:
            name = f"{fn.__module__}.{fn.__qualname__}".replace("<locals>.", "")
        if name in self._handlers:
            raise ConfigurationError(
                f"A handler named {name!r} is already registered; give this one another "
                "function name or pass name=... to on()."
            )
        handler = Handler(name=name, fn=fn, event_types=frozenset(event_types), **options)
        self._handlers[name] = handler
        self._routes.clear()
        for listener in self._listeners:
            listener(handler)
        return handler

    def handlers_for(self, event_type: str) -> tuple[Handler, ...]:
        """The handlers an event of ``event_type`` goes to. Unknown types reach only ``"*"``."""
        routed = self._routes.get(event_type)
        if routed is None:
            known = event_type in EVENT_TYPES
            routed = tuple(
                handler
                for handler in self._handlers.values()
                if WILDCARD in handler.event_types or (known and event_type in handler.event_types)
            )
            # Unknown types are not kept: the sender picks them.
            if known or event_type == WILDCARD:
                self._routes[event_type] = routed
        return routed
