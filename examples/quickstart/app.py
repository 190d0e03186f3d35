"""The smallest useful receiver: log every Mem0 event it receives.

Run it from this directory (see README.md)::

    MEM0_RECEIVER_SECRETS=$(mem0-receiver secret) mem0-receiver dev app:receiver
"""

from __future__ import annotations

import logging

from mem0_receiver import MemoryEvent, Receiver

logger = logging.getLogger("quickstart")

# Settings come from the environment: MEM0_RECEIVER_SECRETS (required, it signs
# the webhook URL) and MEM0_RECEIVER_BROKER_URL (unset: the in-memory broker).
receiver = Receiver()


@receiver.on("*")
def log_event(event: MemoryEvent) -> None:
    # Identifiers only: memory text is user data and stays out of logs.
    logger.info(
        "Received %s delivery=%s memory_id=%s",
        event.event_type,
        event.delivery.delivery_id,
        event.memory_id,
    )
