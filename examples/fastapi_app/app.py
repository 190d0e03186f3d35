"""An existing FastAPI app that mounts a Mem0 receiver at /webhooks/mem0.

The app keeps its own routes (``/health``, ``/items``) and adds
``/events/recent``, which shows the events the receiver's handler recorded.
Handlers run on dramatiq workers, possibly in another process, so they record
events in a SQLite file (``EVENTS_DB``) that both sides open.

Run it (see README.md)::

    uvicorn app:app                        # the HTTP side, FastAPI and the receiver
    mem0-receiver worker app:receiver      # the handlers, with MEM0_RECEIVER_BROKER_URL
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from typing import Any

from fastapi import FastAPI, Request

from mem0_receiver import MemoryCategorized, MemoryEvent, Receiver

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    delivery_id TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    memory_id   TEXT,
    categories  TEXT,
    received_at TEXT NOT NULL
)
"""

ITEMS = {1: {"id": 1, "name": "notebook"}, 2: {"id": 2, "name": "pencil"}}

receiver = Receiver()  # MEM0_RECEIVER_SECRETS, MEM0_RECEIVER_BROKER_URL


def connect() -> sqlite3.Connection:
    """The events database; the lifespan and every worker process call this."""
    db = sqlite3.connect(os.environ.get("EVENTS_DB", "events.sqlite3"), timeout=30)
    db.row_factory = sqlite3.Row
    db.execute(SCHEMA)
    return db


@receiver.on("*")
def record(event: MemoryEvent) -> None:
    # The delivery id is the primary key: a redelivered message is recorded once.
    categories = ",".join(event.categories) if isinstance(event, MemoryCategorized) else None
    with closing(connect()) as db, db:
        db.execute(
            "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)",
            (
                event.delivery.delivery_id,
                event.event_type,
                event.memory_id,
                categories,
                event.delivery.received_at.isoformat(),
            ),
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    # Starlette does not run a mounted app's lifespan, so the host enters it
    # here, next to its own resources.
    with closing(connect()) as db:
        async with receiver.lifespan(app):
            yield {"db": db}


app = FastAPI(lifespan=lifespan)
app.mount("/webhooks/mem0", receiver)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items")
async def list_items() -> list[dict[str, Any]]:
    return list(ITEMS.values())


@app.get("/events/recent")
async def recent_events(request: Request, limit: int = 20) -> list[dict[str, Any]]:
    rows = request.state.db.execute(
        "SELECT * FROM events ORDER BY received_at DESC, rowid DESC LIMIT ?", (limit,)
    )
    return [dict(row) for row in rows]
