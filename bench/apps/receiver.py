"""The app under test: mem0-receiver with one no-op handler for ``memory_add``.

If ``mem0_receiver`` is not importable yet, importing this module fails and bench/run.py
reports the row as unavailable.
"""

from __future__ import annotations

from bench.apps._common import require_env
from mem0_receiver import Receiver

__all__ = ["app", "receiver", "signed_url"]

receiver = Receiver(
    broker=require_env("BENCH_REDIS_URL"),
    secrets=[require_env("BENCH_SECRET")],
)


@receiver.on("memory_add")
def noop(event: object) -> None:
    """No-op: the benchmark only measures the receiving side."""


app = receiver


def signed_url(base: str) -> str:
    return str(receiver.webhook_url(base))
