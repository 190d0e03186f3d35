"""Signed POSTs of one event each, paced or in bursts, while a timeline injects faults."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from mem0_receiver.testing import make_body


def event_body(memory_id: str) -> bytes:
    return make_body("memory_add", memory_id=memory_id, memory=f"fault suite {memory_id}")


@dataclass
class Answer:
    memory_id: str
    started: float  # monotonic
    elapsed: float = 0.0
    status: int = 0
    outcome: str = ""  # "queued", "duplicate", ... from a 202 body
    retry_after: str | None = None
    error: str = ""


@dataclass
class LoadResult:
    answers: list[Answer] = field(default_factory=list)

    def with_status(self, status: int) -> list[Answer]:
        return [a for a in self.answers if a.status == status]

    def accepted(self) -> list[str]:
        return [a.memory_id for a in self.answers if a.status == 202]

    def statuses(self) -> dict[str, int]:
        counts = Counter(str(a.status) if a.status else f"error:{a.error}" for a in self.answers)
        return dict(sorted(counts.items()))

    def max_latency(self) -> float:
        return max((a.elapsed for a in self.answers), default=0.0)

    def p99_latency(self) -> float:
        latencies = sorted(a.elapsed for a in self.answers)
        return latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0


Step = Callable[["Load"], Awaitable[None]]


def blocking(name: str, action: Callable[[], None]) -> Step:
    """A timeline step that runs a blocking ``action`` (a signal, a restart) in a thread,
    then marks the moment as ``name``."""

    async def step(load: Load) -> None:
        await asyncio.to_thread(action)
        load.mark(name)

    return step


class Load:
    """Signed POSTs of one event each, answered or failed, with their latency."""

    def __init__(self, url: str, *, concurrency: int = 64, timeout: float = 10.0) -> None:
        self.url = url
        self.result = LoadResult()
        self.marks: dict[str, float] = {}
        self._gate = asyncio.Semaphore(concurrency)
        self._limits = httpx.Limits(
            max_connections=concurrency, max_keepalive_connections=concurrency
        )
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    async def post(self, memory_id: str) -> Answer:
        assert self._client is not None
        async with self._gate:
            answer = Answer(memory_id, time.monotonic())
            self.result.answers.append(answer)
            try:
                response = await self._client.post(
                    self.url,
                    content=event_body(memory_id),
                    headers={"Content-Type": "application/json"},
                )
            except httpx.HTTPError as exc:
                answer.error = type(exc).__name__
            else:
                answer.status = response.status_code
                answer.retry_after = response.headers.get("retry-after")
                if response.status_code == 202:
                    answer.outcome = response.json()["status"]
            answer.elapsed = time.monotonic() - answer.started
        return answer

    async def burst(self, memory_ids: Sequence[str]) -> list[Answer]:
        """POST all at once; return when every one is answered."""
        return list(await asyncio.gather(*(self.post(memory_id) for memory_id in memory_ids)))

    async def run(
        self,
        schedule: Sequence[tuple[float, str]],
        *,
        timeline: Sequence[tuple[float, Step]] = (),
    ) -> LoadResult:
        """POST each ``(offset, memory_id)`` of ``schedule`` at its offset in seconds,
        while the ``timeline`` steps run at theirs (in order, each after the previous)."""
        started = time.monotonic()

        async def at(offset: float, memory_id: str) -> None:
            await asyncio.sleep(max(0.0, started + offset - time.monotonic()))
            await self.post(memory_id)

        async def steps() -> None:
            for offset, step in timeline:
                await asyncio.sleep(max(0.0, started + offset - time.monotonic()))
                await step(self)

        async with httpx.AsyncClient(timeout=self._timeout, limits=self._limits) as client:
            self._client = client
            await asyncio.gather(steps(), *(at(offset, i) for offset, i in schedule))
            self._client = None
        return self.result


def spread(memory_ids: Sequence[str], start: float, end: float) -> list[tuple[float, str]]:
    """A schedule that sends ``memory_ids`` evenly from ``start`` to ``end`` seconds."""
    step = (end - start) / max(len(memory_ids), 1)
    return [(start + index * step, memory_id) for index, memory_id in enumerate(memory_ids)]


def run_load(
    url: str,
    schedule: Sequence[tuple[float, str]],
    *,
    timeline: Sequence[tuple[float, Step]] = (),
) -> Load:
    load = Load(url)
    asyncio.run(load.run(schedule, timeline=timeline))
    return load
