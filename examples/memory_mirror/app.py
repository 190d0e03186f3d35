"""Keep a local SQLite mirror of a Mem0 project's memories (the rules are in mirror.py).

Run it from this directory (see README.md)::

    MEM0_RECEIVER_SECRETS=$(mem0-receiver secret) mem0-receiver dev app:receiver
    python query.py
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TypeVar

import mirror

from mem0_receiver import (
    MemoryAdded,
    MemoryCategorized,
    MemoryDeleted,
    MemoryEvent,
    MemoryUpdated,
    Receiver,
)

logger = logging.getLogger("memory_mirror")

E = TypeVar("E", bound=MemoryEvent)

# MEM0_RECEIVER_SECRETS and MEM0_RECEIVER_BROKER_URL configure the receiver;
# MIRROR_DB names the SQLite file (default: mirror.sqlite3 here).
receiver = Receiver()


def apply_once(handler: str, event: E, change: Callable[[sqlite3.Connection, E], bool]) -> None:
    """Apply ``change`` unless this handler already has, in one transaction with the record."""
    with mirror.transaction() as db:
        if not mirror.claim(db, event, handler):
            outcome = "already applied"
        elif change(db, event):
            outcome = "applied"
        else:
            outcome = "superseded"
    logger.info(
        "%s %s delivery=%s memory_id=%s",
        event.event_type,
        outcome,
        event.delivery.delivery_id,
        event.memory_id,
    )


@receiver.on("memory_add")
def mirror_add(event: MemoryAdded) -> None:
    apply_once("add", event, mirror.add)


@receiver.on("memory_update")
def mirror_update(event: MemoryUpdated) -> None:
    apply_once("update", event, mirror.update)


@receiver.on("memory_delete")
def mirror_delete(event: MemoryDeleted) -> None:
    apply_once("delete", event, mirror.delete)


@receiver.on("memory_categorize")
def mirror_categorize(event: MemoryCategorized) -> None:
    apply_once("categorize", event, mirror.categorize)
