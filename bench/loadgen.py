"""The load: wrk (pinned, bounded in time) plus a few plain HTTP helpers, all to 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.procs import LOOPBACK, BenchError, Proc, ProcessGroup, wait_with_rusage

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"

MEM0_ADD_BODY = json.dumps(
    {
        "event_details": {
            "id": "a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5",
            "data": {"memory": "Name is Alex"},
            "event": "ADD",
        }
    }
)
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class WrkResult:
    duration_s: float
    issued: int
    responses: int
    statuses: dict[int, int]
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    cpu_s: float

    @property
    def ok_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def accepted(self) -> int:
        return self.statuses.get(202, 0)

    @property
    def socket_errors(self) -> int:
        return sum(self.errors[k] for k in ("connect", "read", "write", "timeout"))

    @property
    def error_count(self) -> int:
        """Non-2xx responses plus socket errors (connect, read, write, timeout)."""
        return self.responses - self.ok_2xx + self.socket_errors

    @property
    def unanswered(self) -> int:
        """Requests written to the server whose response wrk never read: cut off by wrk's
        deadline (wrk stops without waiting for them) or lost to a socket error."""
        return max(self.issued - self.responses, 0)

    @property
    def rps(self) -> float:
        """Successful (2xx) responses per second."""
        return self.ok_2xx / self.duration_s

    @property
    def cpu_pct(self) -> float:
        """wrk's own CPU use, in % of one core: near 100 would mean wrk is the bottleneck."""
        return self.cpu_s / self.duration_s * 100


def _check_target(url: str) -> None:
    if urlsplit(url).hostname != LOOPBACK:
        raise BenchError(f"refusing to send load anywhere but {LOOPBACK}: {url}")


def start_wrk(
    group: ProcessGroup,
    env: dict[str, str],
    url: str,
    *,
    concurrency: int,
    duration: int,
    cpus: str,
    label: str,
    distinct_deliveries: bool,
    cwd: Path,
) -> Proc:
    """Start ``wrk -t1`` for ``duration`` s; reap it with :func:`finish_wrk`."""
    _check_target(url)
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "5s"]
    argv += ["-s", str(WRK_SCRIPT), url]
    wrk_env = {**env, "BENCH_WRK_BODY": MEM0_ADD_BODY}
    if distinct_deliveries:
        wrk_env["BENCH_WRK_DELIVERY_PREFIX"] = f"{label}-{secrets.token_hex(4)}-"
    return group.spawn(f"wrk-{label}", argv, cpus=cpus, env=wrk_env, cwd=cwd)


def finish_wrk(wrk: Proc, duration: int) -> WrkResult:
    usage = wait_with_rusage(wrk, timeout=duration + 30)
    return parse_wrk(wrk, usage.ru_utime + usage.ru_stime)


def parse_wrk(wrk: Proc, cpu_s: float) -> WrkResult:
    text = wrk.log_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("BENCH_RESULT ")]
    if wrk.popen.returncode != 0 or not lines:
        raise BenchError(f"wrk failed (exit {wrk.popen.returncode}):\n{wrk.log_tail()}")
    raw = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    return WrkResult(
        duration_s=raw["duration_us"] / 1e6,
        issued=raw["issued"],
        responses=raw["responses"],
        statuses={int(k): v for k, v in raw["statuses"].items()},
        errors=raw["errors"],
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        cpu_s=cpu_s,
    )


DOCUMENTED_ID = "a1b2c3d4-e5f6-4g7h-8i9j-k0l1m2n3o4p5"


def post_events(url: str, count: int, *, distinct: bool, time_limit: float) -> None:
    """POST the Mem0 body ``count`` times on one keep-alive connection; every answer must be 202.

    Bounded in count and in time. With ``distinct``, each POST has its own ``webhook-id``.
    """
    _check_target(url)
    parts = urlsplit(url)
    target = f"{parts.path or '/'}?{parts.query}"
    prefix = f"post-{secrets.token_hex(4)}-"
    deadline = time.monotonic() + time_limit
    conn = http.client.HTTPConnection(LOOPBACK, parts.port, timeout=10)
    try:
        for i in range(count):
            if time.monotonic() > deadline:
                raise BenchError(f"{count} POSTs took more than {time_limit:.0f}s")
            body, headers = MEM0_ADD_BODY, JSON_HEADERS
            if distinct:  # a distinct event about a distinct memory, as in bench/wrk_post.lua
                delivery = f"{prefix}{i}"
                headers = {**JSON_HEADERS, "webhook-id": delivery}
                body = MEM0_ADD_BODY.replace(DOCUMENTED_ID, delivery)
            conn.request("POST", target, body, headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 202:
                raise BenchError(f"POST answered {response.status}, expected 202: {body[:300]!r}")
    finally:
        conn.close()
