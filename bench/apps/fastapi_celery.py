"""Baseline: FastAPI + the same token check + pydantic body + Celery ``task.delay()`` on Redis.

The endpoint is ``async def`` like most FastAPI/Celery examples, so ``delay()`` (synchronous
kombu publish) runs on the event loop. Messages land in the Redis list "celery".
"""

from __future__ import annotations

from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, FastAPI, HTTPException, Query

from bench.apps._common import Mem0Event, TokenVerifier, require_env, signed_url

__all__ = ["CELERY_QUEUE", "app", "celery_app", "handle_memory_event", "signed_url"]

CELERY_QUEUE = "celery"

celery_app = Celery("bench_fastapi_celery", broker=require_env("BENCH_REDIS_URL"))
celery_app.conf.update(
    task_default_queue=CELERY_QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)
verifier = TokenVerifier()


@celery_app.task(name="bench.handle_memory_event")
def handle_memory_event(event: dict[str, Any]) -> None:
    """No-op: the benchmark only measures the receiving side."""


def verify_token(token: Annotated[str | None, Query()] = None) -> None:
    if not verifier.is_valid(token):
        raise HTTPException(status_code=403, detail="invalid token")


app = FastAPI()


@app.post("/", status_code=202, dependencies=[Depends(verify_token)])
async def webhook(event: Mem0Event) -> dict[str, str]:
    handle_memory_event.delay(event.model_dump(mode="json"))
    return {"status": "accepted"}
