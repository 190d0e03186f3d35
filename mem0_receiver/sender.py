"""``mem0-receiver send``: post sample Mem0 events to an endpoint, once or as a small load.

Without Mem0 in the loop, this is how to try a deployed receiver end to end::

    mem0-receiver send "$(mem0-receiver url https://example.com/hooks)" --event memory_add
    mem0-receiver send "$URL" --count 2000 --concurrency 32
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from .progress import ProgressBar
from .testing import Signer, make_body
from .verify import TOKEN_PARAM

__all__ = ["Summary", "send"]


@dataclass
class Summary:
    """What a run of ``send`` saw."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def lines(self) -> list[str]:
        count = len(self.latencies)
        rate = count / self.elapsed if self.elapsed else 0.0
        ms = [f"p{q:g}={self.percentile(q) * 1000:.1f}ms" for q in (50, 90, 99)]
        return [
            f"requests={count} time={self.elapsed:.2f}s rate={rate:.0f} req/s",
            "latency " + " ".join(ms) + f" max={self.percentile(100) * 1000:.1f}ms",
            "statuses " + " ".join(f"{k}={v}" for k, v in sorted(self.statuses.items())),
        ]


def _with_token(url: str, signer: Signer) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    if any(name == TOKEN_PARAM for name, _ in query):
        return url
    query.append((TOKEN_PARAM, signer.token()))
    return urlunsplit((*parts[:3], urlencode(query), parts.fragment))


async def _run(
    url: str,
    bodies: Sequence[bytes],
    *,
    scheme: str,
    signer: Signer,
    concurrency: int,
    timeout: float,
    progress: ProgressBar | None,
) -> tuple[Summary, httpx.Response | None]:
    summary = Summary()
    last: list[httpx.Response] = []
    queue = iter(bodies)

    async def worker(client: httpx.AsyncClient) -> None:
        for body in queue:
            headers = {"Content-Type": "application/json"}
            if scheme == "hmac":
                headers.update(signer.hmac_headers(body))
            elif scheme == "standard":
                headers.update(signer.standard_headers(body))
            started = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
                summary.statuses[str(response.status_code)] += 1
                last[:] = [response]
            except httpx.HTTPError as exc:
                summary.statuses[type(exc).__name__] += 1
            summary.latencies.append(time.perf_counter() - started)
            if progress is not None:
                progress.advance()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        summary.elapsed = time.perf_counter() - started
    return summary, (last[0] if last else None)


def send(
    url: str,
    *,
    event_type: str = "memory_add",
    memory: str | None = None,
    categories: list[str] | None = None,
    shape: str = "nested",
    scheme: str = "token",
    secrets: Sequence[str] = (),
    count: int = 1,
    concurrency: int = 1,
    timeout: float = 10.0,
    out: TextIO = sys.stdout,
) -> Summary:
    """Post ``count`` sample events; print the response, or a progress bar and a summary."""
    signer = Signer(list(secrets))
    if scheme == "token" and secrets:
        url = _with_token(url, signer)
    fields: dict[str, object] = {"shape": shape}
    if memory is not None:
        fields["memory"] = memory
    if categories is not None:
        fields["categories"] = categories
    # Distinct memory ids, so that the receiver does not drop repeats as duplicates.
    bodies = [
        make_body(event_type, memory_id=f"mem_{time.time_ns()}_{i}", **fields) for i in range(count)
    ]
    summary, response = asyncio.run(
        _run(
            url,
            bodies,
            scheme=scheme,
            signer=signer,
            concurrency=max(1, min(concurrency, count)),
            timeout=timeout,
            progress=ProgressBar(count) if count > 1 else None,
        )
    )
    if count == 1:
        if response is not None:
            print(f"{response.status_code} {response.text}", file=out)
        else:
            print(f"no response: {', '.join(summary.statuses)}", file=out)
    else:
        for line in summary.lines():
            print(line, file=out)
    return summary
