"""Two receivers and three workers, as separate processes on one broker, share the guarantees.

Both ``mem0-receiver serve`` processes and all three ``mem0-receiver worker``
commands run as a user runs them. The handlers write a ledger to a Redis of
the test's own, not the broker's nor the state's: one ``RPUSH`` per run onto
one list, so the list's order is the order in which the runs happened (a run
waits for its predecessor's to return, so its ``RPUSH`` comes after).

The sender POSTs each memory's events in order, the next one only after the
previous one was answered, alternating between the two receivers, many
memories at once; some events are POSTed twice (to both receivers, one after
the other or at the same time). With no faults injected, every handler must
run exactly once per event, in send order per memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import httpx
from conftest import RedisServer, cli_env, free_port, wait_for_port

from mem0_receiver import Receiver
from mem0_receiver.testing import make_body
from mem0_receiver.verify import new_secret

APP = """
import os

import redis

from mem0_receiver import Receiver

receiver = Receiver()
LEDGER = redis.Redis.from_url(os.environ["SCALE_LEDGER_URL"], socket_timeout=5)


def record(handler, event):
    seq = event.payload["event_details"]["seq"]
    line = f"{handler} {event.memory_id} {seq} {event.event_type} {event.delivery.delivery_id}"
    LEDGER.rpush("ledger", f"{line} {os.getpid()}")


@receiver.on("memory_add", "memory_update", "memory_delete", queue_name="scale_out")
def mirror(event):
    record("mirror", event)


@receiver.on("*", queue_name="scale_out")
def audit(event):
    record("audit", event)
"""

#: What each memory goes through, in order; its index + 1 is the event's ``seq``.
LIFE = ["memory_add", *["memory_update"] * 3, "memory_categorize"]
LIFE += [*["memory_update"] * 4, "memory_delete"]
HANDLED_BY = {"mirror": {"memory_add", "memory_update", "memory_delete"}, "audit": set(LIFE)}
MEMORIES = 200
EVENTS = MEMORIES * len(LIFE)
#: Share of events POSTed a second time, one after the other or both at once.
DUPLICATE_RATE = 0.1
CONCURRENCY = 48
RECEIVERS = 2
WORKERS = 3
WORKER_THREADS = 4
DRAIN_TIMEOUT = 60.0


def log_text(process: subprocess.Popen[str]) -> str:
    """A spawned process's output, read by path: seeking the handle the process
    writes through would move its offset too."""
    return Path(process.log.name).read_text(errors="replace")  # type: ignore[attr-defined]


def stop(processes: list[subprocess.Popen[str]]) -> None:
    """SIGTERM to each main process, as ``kill PID`` does; the group is killed if it lingers."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def flush_queues(url: str, state_url: str | None) -> None:
    """Empty the test's queue on RabbitMQ, which keeps queues across runs."""
    receiver = Receiver(secrets=[new_secret()], broker=url, state_url=state_url, environ={})
    receiver.broker.declare_queue("scale_out")
    receiver.broker.flush_all()
    receiver.broker.close()


@dataclass
class Sent:
    """What the sender did, and what the receivers answered."""

    statuses: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    #: (memory_id, seq) -> the delivery id each answer named.
    delivery_ids: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    #: (memory_id, seq) -> "queued"/"duplicate" answers, for the events POSTed twice.
    doubled: dict[tuple[str, int], list[str]] = field(default_factory=dict)


async def send_everything(urls: list[str], rng: random.Random) -> Sent:
    sent = Sent()
    gate = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY)
    # Decided up front, so that the run depends on the seed only.
    plan = [
        [(rng.random() < DUPLICATE_RATE, rng.random() < 0.5) for _ in LIFE] for _ in range(MEMORIES)
    ]

    async with httpx.AsyncClient(timeout=15, limits=limits) as client:

        async def post(url: str, body: bytes, headers: dict[str, str], key: tuple[str, int]) -> str:
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                sent.errors.append(f"{key}: {type(exc).__name__}: {exc}")
                return "error"
            sent.statuses[response.status_code] += 1
            if response.status_code != 202:
                sent.errors.append(f"{key}: {response.status_code} {response.text}")
                return "error"
            answer = response.json()
            sent.outcomes[answer["status"]] += 1
            sent.delivery_ids[key].add(answer["delivery_id"])
            return str(answer["status"])

        async def live(index: int) -> None:
            memory_id = f"mem-{index:04d}"
            # Half the memories come with a sender's webhook-id, half are told apart by body.
            with_id = index % 2 == 0
            for seq, event_type in enumerate(LIFE, start=1):
                key = (memory_id, seq)
                body = make_body(event_type, memory_id=memory_id, memory=f"v{seq}", seq=seq)
                headers = {"Content-Type": "application/json"}
                if with_id:
                    headers["webhook-id"] = f"msg_{memory_id}_{seq}"
                first, other = urls[(index + seq) % 2], urls[(index + seq + 1) % 2]
                doubled, at_once = plan[index][seq - 1]
                async with gate:
                    if doubled and at_once:
                        answers = await asyncio.gather(
                            post(first, body, headers, key), post(other, body, headers, key)
                        )
                        sent.doubled[key] = sorted(answers)
                    else:
                        answer = await post(first, body, headers, key)
                        if doubled:
                            again = await post(other, body, headers, key)
                            sent.doubled[key] = sorted([answer, again])

        await asyncio.gather(*(live(index) for index in range(MEMORIES)))
    return sent


def test_two_receivers_and_three_workers_run_every_handler_once_per_event_in_memory_order(
    tmp_path: Path,
    spawn: Callable[..., subprocess.Popen[str]],
    make_redis: Callable[..., RedisServer],
    broker_url: tuple[str, str | None],
) -> None:
    url, state_url = broker_url
    kind = "redis" if state_url is None else "rabbitmq"
    if state_url is not None:
        flush_queues(url, state_url)
    ledger = make_redis()
    ledger_client = ledger.client()
    (tmp_path / "scaleapp.py").write_text(APP)
    secret = new_secret()
    env = cli_env(
        MEM0_RECEIVER_SECRETS=secret,
        MEM0_RECEIVER_BROKER_URL=url,
        SCALE_LEDGER_URL=ledger.url,
        **({"MEM0_RECEIVER_STATE_URL": state_url} if state_url else {}),
    )
    seed = int(os.environ.get("MEM0_SCALE_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)

    ports = [free_port() for _ in range(RECEIVERS)]
    servers = [
        spawn("serve", "scaleapp:receiver", "--port", str(port), cwd=tmp_path, env=env)
        for port in ports
    ]
    workers = [
        spawn(
            "worker",
            "scaleapp:receiver",
            "--processes",
            "1",
            "--threads",
            str(WORKER_THREADS),
            cwd=tmp_path,
            env=env,
        )
        for _ in range(WORKERS)
    ]
    try:
        for port, server in zip(ports, servers, strict=True):
            wait_for_port(port, timeout=30, process=server)
        deadline = time.monotonic() + 30
        while not all("ready for action" in log_text(w) for w in workers):
            assert time.monotonic() < deadline, "\n".join(log_text(w) for w in workers)
            assert all(w.poll() is None for w in workers), "\n".join(log_text(w) for w in workers)
            time.sleep(0.1)
        signer = Receiver(secrets=[secret], environ={})
        urls = [signer.webhook_url(f"http://127.0.0.1:{port}/") for port in ports]

        started = time.monotonic()
        sent = asyncio.run(send_everything(urls, rng))
        sending = time.monotonic() - started
        expected = {
            (handler, f"mem-{index:04d}", seq)
            for index in range(MEMORIES)
            for seq, event_type in enumerate(LIFE, start=1)
            for handler, types in HANDLED_BY.items()
            if event_type in types
        }
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while ledger_client.llen("ledger") < len(expected) and time.monotonic() < deadline:
            time.sleep(0.1)
        draining = time.monotonic() - started
        time.sleep(1.5)  # room for a wrong second run to show up
        lines = [raw.decode().split() for raw in ledger_client.lrange("ledger", 0, -1)]
        exited = [p.args[1] for p in [*servers, *workers] if p.poll() is not None]
    finally:
        stop([*servers, *workers])

    runs = Counter((handler, memory_id, int(seq)) for handler, memory_id, seq, *_ in lines)
    order: dict[tuple[str, str], list[int]] = defaultdict(list)
    for handler, memory_id, seq, *_ in lines:
        order[handler, memory_id].append(int(seq))
    ran_ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    for _, memory_id, seq, _, delivery_id, _ in lines:
        ran_ids[memory_id, int(seq)].add(delivery_id)
    lost = sorted(expected - set(runs))
    twice = sorted(run for run, count in runs.items() if count > 1)
    unexpected = sorted(set(runs) - expected)
    # Order only: a memory's runs, as they happened, never go back to an earlier event.
    out_of_order = {
        key: seqs for key, seqs in order.items() if any(a > b for a, b in pairwise(seqs))
    }
    wrong_answers = {
        key: answers for key, answers in sent.doubled.items() if answers != ["duplicate", "queued"]
    }
    wrong_ids = {
        key: ids for key, ids in sent.delivery_ids.items() if len(ids) != 1 or ran_ids[key] != ids
    }
    processes = {int(line[-1]) for line in lines}
    print(
        f"\n[scale-out] broker={kind} seed={seed} events={EVENTS} "
        f"posts={sum(sent.statuses.values())} statuses={dict(sent.statuses)} "
        f"outcomes={dict(sent.outcomes)} receivers={RECEIVERS} worker_commands={WORKERS} "
        f"worker_processes_that_ran={len(processes)} threads={WORKER_THREADS} "
        f"expected_runs={len(expected)} handled={len(set(runs) & expected)} "
        f"duplicate_runs={sum(runs[run] - 1 for run in twice)} lost={len(lost)} "
        f"out_of_order={len(out_of_order)} send_s={sending:.1f} "
        f"send_and_drain_s={draining:.1f} events_per_s={EVENTS / draining:.0f}",
        flush=True,
    )
    assert not sent.errors, sent.errors[:10]
    assert set(sent.statuses) == {202}
    assert sent.outcomes["queued"] == EVENTS
    assert sent.outcomes["duplicate"] == len(sent.doubled) > 0
    assert not wrong_answers, wrong_answers
    assert not exited, f"These exited during the run: {exited}"
    assert not lost, f"{len(lost)} runs never happened, e.g. {lost[:10]}"
    assert not twice, f"{len(twice)} runs happened more than once, e.g. {twice[:10]}"
    assert not unexpected, unexpected[:10]
    assert not out_of_order, dict(list(out_of_order.items())[:5])
    assert not wrong_ids, dict(list(wrong_ids.items())[:5])
    assert len(processes) == WORKERS
