"""A local SQLite copy of a Mem0 project's memories and their categories.

The handlers in ``app.py`` write it; ``query.py`` reads it. dramatiq delivers
each event at least once, and several workers handle events in no set order,
so every change follows rules that make duplicates and late arrivals harmless:

* A handler applies an event once: its ``(idempotency key, handler)`` goes into
  the ``applied`` table in the same transaction as the change, and an event
  already there changes nothing.
* ``memory_delete`` leaves a tombstone: the row stays, with ``deleted = 1``,
  no text and no categories, and no later event brings it back (Mem0 never
  reuses a memory id).
* ``memory_add`` inserts the memory or overwrites its text, unless an update
  or a delete is already applied: an add that arrives after them is older.
* ``memory_update`` sets the text, even before the add has arrived.
* ``memory_categorize`` replaces the memory's set of categories.

Mem0's documented payloads carry no version or timestamp, so of two different
updates to one memory, the one handled last wins.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mem0_receiver import (
    MemoryAdded,
    MemoryCategorized,
    MemoryDeleted,
    MemoryEvent,
    MemoryUpdated,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    memory_id     TEXT PRIMARY KEY,
    memory        TEXT,                 -- NULL once deleted, or while the add is still to come
    deleted       INTEGER NOT NULL DEFAULT 0,
    text_from     TEXT,                 -- the event type that last set `memory`
    updated_at    TEXT NOT NULL,        -- when the last delivery applied here was received
    last_delivery TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS categories (
    memory_id TEXT NOT NULL,
    category  TEXT NOT NULL,
    PRIMARY KEY (memory_id, category)
);
CREATE TABLE IF NOT EXISTS applied (
    idempotency_key TEXT NOT NULL,
    handler         TEXT NOT NULL,
    PRIMARY KEY (idempotency_key, handler)
);
"""

# Every change writes the whole row; ON CONFLICT turns the insert into an update.
_SET_TEXT = """
INSERT INTO memories (memory_id, memory, deleted, text_from, updated_at, last_delivery)
VALUES (:memory_id, :memory, 0, :text_from, :received_at, :delivery_id)
ON CONFLICT (memory_id) DO UPDATE SET
    memory = coalesce(excluded.memory, memory),  -- an event without text keeps ours
    text_from = excluded.text_from,
    updated_at = excluded.updated_at, last_delivery = excluded.last_delivery
"""
_TOMBSTONE = """
INSERT INTO memories (memory_id, memory, deleted, text_from, updated_at, last_delivery)
VALUES (:memory_id, NULL, 1, 'memory_delete', :received_at, :delivery_id)
ON CONFLICT (memory_id) DO UPDATE SET
    memory = NULL, deleted = 1, text_from = excluded.text_from,
    updated_at = excluded.updated_at, last_delivery = excluded.last_delivery
"""
_TOUCH = """
INSERT INTO memories (memory_id, memory, deleted, text_from, updated_at, last_delivery)
VALUES (:memory_id, NULL, 0, NULL, :received_at, :delivery_id)
ON CONFLICT (memory_id) DO UPDATE SET
    updated_at = excluded.updated_at, last_delivery = excluded.last_delivery
"""


def db_path() -> str:
    """The mirror's file: ``$MIRROR_DB``, else ``mirror.sqlite3`` in the current directory."""
    return os.environ.get("MIRROR_DB") or "mirror.sqlite3"


@dataclass(frozen=True)
class Mirrored:
    """One memory as the mirror holds it."""

    memory_id: str
    memory: str | None
    categories: tuple[str, ...]
    deleted: bool


@contextmanager
def transaction(path: str | None = None) -> Iterator[sqlite3.Connection]:
    """One write transaction on the mirror, which is created if needed.

    ``BEGIN IMMEDIATE`` takes the write lock before the first read, so two
    worker threads never both read a row and then both decide to change it.
    """
    db = sqlite3.connect(path or db_path(), timeout=30, isolation_level=None)
    try:
        db.executescript(SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()


def claim(db: sqlite3.Connection, event: MemoryEvent, handler: str) -> bool:
    """Record that ``handler`` applies ``event``; False if it already has."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO applied VALUES (?, ?)", (event.delivery.idempotency_key, handler)
    )
    return cursor.rowcount == 1


def _params(event: MemoryEvent, **extra: object) -> dict[str, object]:
    """The memory's id and the delivery's stamp, as named SQL parameters."""
    # The parser refuses memory events without a memory id; this only narrows the type.
    if event.memory_id is None:
        raise ValueError(f"A {event.event_type} event without a memory id cannot be mirrored.")
    return {
        "memory_id": event.memory_id,
        "received_at": event.delivery.received_at.isoformat(),
        "delivery_id": event.delivery.delivery_id,
        **extra,
    }


def _state(db: sqlite3.Connection, params: dict[str, object]) -> tuple[bool, str | None] | None:
    """``(deleted, text_from)`` of the memory, or None if the mirror has never seen it."""
    row = db.execute(
        "SELECT deleted, text_from FROM memories WHERE memory_id = :memory_id", params
    ).fetchone()
    return None if row is None else (bool(row[0]), row[1])


def _deleted(db: sqlite3.Connection, params: dict[str, object]) -> bool:
    """Whether the mirror holds a tombstone for the memory."""
    state = _state(db, params)
    return state is not None and state[0]


def add(db: sqlite3.Connection, event: MemoryAdded) -> bool:
    """Insert the memory or overwrite its text; False if an update or a delete came first."""
    params = _params(event, memory=event.memory, text_from="memory_add")
    state = _state(db, params)
    if state is not None and (state[0] or state[1] not in (None, "memory_add")):
        return False
    db.execute(_SET_TEXT, params)
    return True


def update(db: sqlite3.Connection, event: MemoryUpdated) -> bool:
    """Set the memory's text; False if it is deleted."""
    params = _params(event, memory=event.memory, text_from="memory_update")
    if _deleted(db, params):
        return False
    db.execute(_SET_TEXT, params)
    return True


def delete(db: sqlite3.Connection, event: MemoryDeleted) -> bool:
    """Leave a tombstone, without text or categories; False if there is one already."""
    params = _params(event)
    if _deleted(db, params):
        return False
    db.execute(_TOMBSTONE, params)
    db.execute("DELETE FROM categories WHERE memory_id = :memory_id", params)
    return True


def categorize(db: sqlite3.Connection, event: MemoryCategorized) -> bool:
    """Replace the memory's categories; False if it is deleted."""
    params = _params(event)
    if _deleted(db, params):
        return False
    # The categories may arrive before the add: the row then waits for its text.
    db.execute(_TOUCH, params)
    db.execute("DELETE FROM categories WHERE memory_id = :memory_id", params)
    db.executemany(
        "INSERT OR IGNORE INTO categories VALUES (?, ?)",
        [(params["memory_id"], category) for category in event.categories],
    )
    return True


def read(path: str | None = None) -> list[Mirrored]:
    """Every memory in the mirror, by id; FileNotFoundError if there is no mirror yet."""
    file = Path(path or db_path())
    if not file.is_file():
        raise FileNotFoundError(f"No mirror at {file}; start the receiver, or set MIRROR_DB.")
    # Read-only: reading never creates or changes a mirror.
    db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    try:
        categories: dict[str, list[str]] = {}
        for memory_id, category in db.execute(
            "SELECT memory_id, category FROM categories ORDER BY memory_id, category"
        ):
            categories.setdefault(memory_id, []).append(category)
        return [
            Mirrored(memory_id, memory, tuple(categories.get(memory_id, ())), bool(deleted))
            for memory_id, memory, deleted in db.execute(
                "SELECT memory_id, memory, deleted FROM memories ORDER BY memory_id"
            )
        ]
    finally:
        db.close()
