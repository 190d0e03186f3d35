"""Schema drift: payloads that differ from what this version's models know.

Mem0 may add fields or event types at any time. Neither is rejected (the whole
body stays in ``event.payload``); instead each new shape, an event type with
its set of unknown field names, is logged once, and every payload that drifts
is counted in ``mem0_receiver_schema_drift_total`` when metrics are on, so
that users notice when Mem0 changes what it sends. Logs carry names only,
never values: a value may be memory text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from .events import unknown_fields

__all__ = ["DEFAULT_MAX_SHAPES", "SchemaDrift"]

logger = logging.getLogger("mem0_receiver.http")

#: Distinct shapes remembered (and logged); past this, new ones are still
#: counted, under ``event_type="other"`` when the type itself is unknown.
DEFAULT_MAX_SHAPES = 256
#: Longest field name or event type written to a log or a metric label.
MAX_NAME = 64
#: Field names listed in one log line.
MAX_LISTED = 20
OTHER = "other"


def _clip(name: str) -> str:
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


class SchemaDrift:
    """Logs each new payload shape once and reports every drifting payload to ``count``."""

    def __init__(
        self,
        known_types: Collection[str],
        *,
        count: Callable[[str, str], None] | None = None,
        max_shapes: int = DEFAULT_MAX_SHAPES,
    ) -> None:
        self.known_types = known_types
        self.count = count
        self.max_shapes = max_shapes
        # (clipped event type, hash of the field names): a shape of a large
        # body costs no more to remember than any other.
        self._shapes: set[tuple[str, int]] = set()
        self._full = False

    def note(self, event_type: str, payload: dict[str, Any]) -> None:
        if event_type in self.known_types:
            fields = unknown_fields(event_type, payload)
            if not fields:
                return
            kind = "field"
        else:
            fields, kind = frozenset(), "event_type"
        label = _clip(event_type)
        shape = (label, hash(fields))
        if shape not in self._shapes:
            if len(self._shapes) < self.max_shapes:
                self._shapes.add(shape)
                self._log(label, fields)
            elif not self._full:
                self._full = True
                logger.warning(
                    "Seen %d payload shapes this version does not model; logging no more.",
                    self.max_shapes,
                )
        if self.count is not None:
            if kind == "event_type" and shape not in self._shapes:
                label = OTHER
            self.count(label, kind)

    @staticmethod
    def _log(event_type: str, fields: frozenset[str]) -> None:
        if not fields:
            logger.warning(
                "Received an unknown event type %r: acknowledged and passed to '*' handlers only.",
                event_type,
            )
            return
        names = sorted(fields)
        listed = ", ".join(repr(_clip(name)) for name in names[:MAX_LISTED])
        if len(names) > MAX_LISTED:
            listed += f" and {len(names) - MAX_LISTED} more"
        logger.warning(
            "Received %s with fields this version does not model: %s. They are kept in "
            "event.payload; a newer mem0-receiver may model them.",
            event_type,
            listed,
        )
