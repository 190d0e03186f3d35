"""The apps under test, and the fresh uvicorn server each measured run starts for one."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from bench.counting import (
    MessageCount,
    count_celery_queue,
    count_dramatiq_messages,
    count_dramatiq_queue,
)
from bench.procs import LOOPBACK, BenchError, Proc, free_port, wait_for_port
from bench.session import REPO_ROOT, SERVER_CPU, Bench


@dataclass(frozen=True)
class AppSpec:
    name: str
    about: str
    #: Counts this app's messages in Redis; None for the empty endpoint, which enqueues nothing.
    counter: Callable[[redis.Redis], MessageCount] | None
    #: Whether the app drops repeated deliveries (matters with --same-delivery).
    dedupes: bool = False

    @property
    def module(self) -> str:
        return f"bench.apps.{self.name}"


APPS: dict[str, AppSpec] = {
    spec.name: spec
    for spec in (
        AppSpec("empty", "empty Starlette endpoint (ceiling)", None),
        AppSpec(
            "naive_dramatiq",
            "Starlette + itsdangerous + pydantic + actor.send() in the async endpoint",
            lambda client: count_dramatiq_queue(client, "default"),
        ),
        AppSpec(
            "fastapi_celery",
            "FastAPI + itsdangerous + pydantic + Celery task.delay()",
            lambda client: count_celery_queue(client, "celery"),
        ),
        AppSpec("receiver", "mem0-receiver", count_dramatiq_messages, dedupes=True),
    )
}


def resolve_url(bench: Bench, spec: AppSpec) -> str:
    """Import the app in a throwaway process and ask it for its signed URL.

    This is also the availability check: an app that cannot be imported (mem0_receiver not
    written yet, a missing package) raises BenchError carrying the import error.
    """
    port = bench.ports.setdefault(spec.name, free_port())
    code = f"import sys; from {spec.module} import signed_url; print(signed_url(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, f"http://{LOOPBACK}:{port}/"],
        capture_output=True,
        text=True,
        env=bench.env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise BenchError(lines[-1] if lines else f"exit status {proc.returncode}")
    url = proc.stdout.strip().splitlines()[-1]
    if urlsplit(url).hostname != LOOPBACK or urlsplit(url).port != port:
        raise BenchError(f"signed URL {url!r} does not target {LOOPBACK}:{port}")
    return url


@contextlib.contextmanager
def running_server(bench: Bench, spec: AppSpec) -> Iterator[Proc]:
    """A fresh single-worker uvicorn for ``spec`` on the server CPU, checked with one POST.

    Stopped with SIGTERM on exit: uvicorn then finishes every request it has accepted.
    """
    port = bench.ports[spec.name]
    argv = [sys.executable, "-m", "uvicorn", f"{spec.module}:app"]
    argv += ["--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    argv += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    argv += ["--log-level", "warning"]
    proc = bench.group.spawn(
        f"uvicorn-{spec.name}", argv, cpus=SERVER_CPU, env=bench.env, cwd=REPO_ROOT
    )
    try:
        wait_for_port(proc, port)
        # One request first, so a misconfigured app fails loudly instead of answering 4xx.
        bench.post(spec.name, 1)
        yield proc
    finally:
        bench.group.stop(proc)
