"""The ``mem0-receiver`` command.

``TARGET`` is ``module:attribute`` naming your Receiver, as in uvicorn::

    mem0-receiver dev app:receiver          # receiver + worker in one process
    mem0-receiver serve app:receiver        # production HTTP side (uvicorn)
    mem0-receiver worker app:receiver       # production worker side (dramatiq)
    mem0-receiver dashboard app:receiver    # the deliveries page, behind a password
    mem0-receiver url https://example.com/webhooks/mem0
    mem0-receiver secret

Every mistake a user can make ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence

from .brokers import check_broker, is_durable
from .config import ENV_PROMETHEUS_DIR, Settings, dashboard_password, use_throwaway_secret
from .errors import ConfigurationError
from .events import EVENT_TYPES
from .receiver import Receiver
from .server import log_config
from .target import load_receiver
from .verify import new_secret

__all__ = ["main"]

EXIT_USAGE = 2


def _receiver(target: str) -> Receiver:
    receiver = load_receiver(target)
    receiver.check()
    return receiver


def _require_durable(receiver: Receiver, command: str) -> None:
    if not is_durable(receiver.broker):
        raise ConfigurationError(
            f"`{command}` needs a durable broker shared with the other processes; set "
            "MEM0_RECEIVER_BROKER_URL=redis://localhost:6379/0, or use `mem0-receiver dev`."
        )
    check_broker(receiver.broker, receiver.settings.broker_url)


def _print_url(receiver: Receiver, host: str, port: int) -> None:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if receiver.settings.insecure:
        url = f"http://{shown}:{port}/"
    else:
        url = receiver.webhook_url(f"http://{shown}:{port}/")
    body = '{"event_details": {"id": "mem_1", "data": {"memory": "Name is Alex"}, "event": "ADD"}}'
    print(f"Register this URL with Mem0 (behind your public host): {url}")
    print("Try it:")
    print(
        f"  curl -sS -X POST {shlex.quote(url)} -H 'Content-Type: application/json' "
        f"-d {shlex.quote(body)}"
    )
    sys.stdout.flush()


def cmd_dev(args: argparse.Namespace) -> None:
    import dramatiq
    import uvicorn

    if use_throwaway_secret(new_secret()):
        print(
            "MEM0_RECEIVER_SECRETS is not set: using a throwaway secret for this run "
            "(the URL below stops working when you restart)."
        )
    receiver = _receiver(args.target)
    check_broker(receiver.broker, receiver.settings.broker_url)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if receiver.metrics is not None:
        from .metrics import watch_workers

        watch_workers(receiver.broker, receiver.metrics.registry)
    worker = dramatiq.Worker(receiver.broker, worker_threads=args.threads, worker_timeout=100)
    worker.start()
    _print_url(receiver, args.host, args.port)
    try:
        uvicorn.run(receiver, host=args.host, port=args.port, log_config=log_config())
    finally:
        worker.stop()


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    receiver = _receiver(args.target)
    _require_durable(receiver, "serve")
    app: object = args.target if args.workers > 1 else receiver
    # uvicorn's processes share one port, so a scrape reaches any one of them:
    # they keep their samples in files, which each one's /metrics adds up.
    shared = None
    if receiver.settings.metrics and args.workers > 1 and ENV_PROMETHEUS_DIR not in os.environ:
        shared = os.environ[ENV_PROMETHEUS_DIR] = tempfile.mkdtemp(prefix="mem0-receiver-metrics-")
    try:
        uvicorn.run(
            app,  # type: ignore[arg-type]
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=log_config(args.log_level),
            log_level=args.log_level,
            proxy_headers=True,
        )
    finally:
        if shared:
            shutil.rmtree(shared, ignore_errors=True)


def _share_worker_metrics(target: str) -> None:
    """Have dramatiq's worker processes keep their samples in dramatiq's directory."""
    from dramatiq.middleware.prometheus import DB_PATH

    # The processes are forked from this one, so prometheus-client must not
    # have been imported here before the variable is set (metrics.py).
    if "prometheus_client" in sys.modules and os.environ.get(ENV_PROMETHEUS_DIR) != DB_PATH:
        raise ConfigurationError(
            f"{target} imports prometheus_client before the worker can make it count across "
            f"processes; start the worker with {ENV_PROMETHEUS_DIR}={DB_PATH} set."
        )
    os.environ[ENV_PROMETHEUS_DIR] = DB_PATH
    # dramatiq documents the directory as cleared before every run but leaves
    # that to us; files of an earlier run's processes would be added up too.
    for path in glob.glob(os.path.join(DB_PATH, "*.db")):
        os.remove(path)


def cmd_worker(args: argparse.Namespace) -> None:
    from dramatiq import cli as dramatiq_cli

    from .worker import ENV_TARGET

    receiver = _receiver(args.target)
    _require_durable(receiver, "worker")
    if receiver.settings.metrics:
        _share_worker_metrics(args.target)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    receiver.check_durability()
    print(receiver.describe(), flush=True)
    os.environ[ENV_TARGET] = args.target
    argv = [
        "mem0_receiver.worker:bootstrap",
        "--processes",
        str(args.processes),
        "--threads",
        str(args.threads),
        "--path",
        os.getcwd(),
    ]
    for queue in args.queues or []:
        argv += ["--queues", queue]
    if args.log_level == "debug":
        argv.append("--verbose")
    parser = dramatiq_cli.make_argument_parser()  # type: ignore[no-untyped-call]
    sys.exit(dramatiq_cli.main(parser.parse_args(argv)))  # type: ignore[no-untyped-call]


def cmd_url(args: argparse.Namespace) -> None:
    receiver = _receiver(args.target) if args.target else Receiver()
    print(receiver.webhook_url(args.base_url))


def cmd_secret(args: argparse.Namespace) -> None:
    print(new_secret())


def cmd_send(args: argparse.Namespace) -> None:
    from .sender import send

    settings = Settings.resolve(secrets=None, verify=None, broker_url=None)
    if args.scheme != "none" and not settings.secrets:
        raise ConfigurationError(
            f"Signing with {args.scheme} needs the receiver's secret: set MEM0_RECEIVER_SECRETS, "
            "or pass --scheme none for a URL that already carries its token."
        )
    if args.count < 1 or args.concurrency < 1:
        raise ConfigurationError("--count and --concurrency must be at least 1.")
    summary = send(
        args.url,
        event_type=args.event,
        memory=args.memory,
        categories=args.categories.split(",") if args.categories else None,
        shape=args.shape,
        scheme=args.scheme,
        secrets=settings.secrets,
        count=args.count,
        concurrency=args.concurrency,
        timeout=args.timeout,
    )
    if not all(status.startswith("2") for status in summary.statuses):
        sys.exit(1)


def cmd_dlq(args: argparse.Namespace) -> None:
    from . import dlq
    from .brokers import failure_store
    from .progress import ProgressBar

    receiver = _receiver(args.target)
    _require_durable(receiver, "dlq")
    store = failure_store(receiver.broker)
    chosen = dlq.select(store.list(), handler=args.handler, ids=args.id or ())
    if args.replay:
        bar = ProgressBar(len(chosen))
        count = dlq.replay(receiver.broker, store, chosen, advance=bar.advance)
        print(f"Replayed {count} failed event(s).")
    elif args.purge:
        if not chosen:
            print("Nothing to purge.")
            return
        if not args.yes:
            print(f"Delete {len(chosen)} failed event(s) for good? [y/N] ", end="", flush=True)
            answer = sys.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                print("Nothing deleted.")
                return
        print(f"Purged {dlq.purge(store, chosen)} failed event(s).")
    else:
        for failure in chosen:
            print(dlq.describe(failure))
        print(f"{len(chosen)} failed event(s).")


def cmd_dashboard(args: argparse.Namespace) -> None:
    import uvicorn

    from .dashboard import ENV_PASSWORD, Dashboard

    password = dashboard_password()
    if not password:
        raise ConfigurationError(
            f"Set {ENV_PASSWORD} to the password the deliveries page will ask for; "
            "there is no default."
        )
    receiver = load_receiver(args.target)
    if not is_durable(receiver.broker):
        raise ConfigurationError(
            "`dashboard` shows what workers in other processes record, so it needs "
            "MEM0_RECEIVER_BROKER_URL=redis://…; with the in-memory broker, mount "
            "Dashboard(receiver) in the process that runs the worker instead."
        )
    check_broker(receiver.broker, receiver.settings.broker_url)
    app = Dashboard(receiver, username=args.username, password=password)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"Deliveries page: http://{shown}:{args.port}/ (user {args.username})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_config=log_config(), proxy_headers=True)


def cmd_register(args: argparse.Namespace) -> None:
    from . import registration

    client = registration.make_client(api_key=args.api_key, host=args.host)
    try:
        if args.list:
            for hook in registration.list_webhooks(client, project_id=args.project_id):
                safe = registration.redact_webhook(hook)
                types = ",".join(safe.get("event_types") or [])
                print(f"{safe.get('webhook_id')}  {safe.get('name')}  {safe.get('url')}  {types}")
        elif args.delete:
            registration.delete_webhook(client, webhook_id=args.delete)
            print(f"Deleted webhook {args.delete}.")
        else:
            if not args.base_url:
                raise ConfigurationError("Give the receiver's public BASE_URL, or --list/--delete.")
            receiver = _receiver(args.target) if args.target else Receiver()
            hook = registration.create_webhook(
                client,
                url=receiver.webhook_url(args.base_url),
                name=args.name,
                event_types=args.event_types.split(","),
                project_id=args.project_id,
            )
            safe = registration.redact_webhook(hook)
            print(f"Registered webhook {safe.get('webhook_id')} for {safe.get('url')}.")
    finally:
        registration.close_client(client)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mem0-receiver", description="Receive Mem0 webhooks and handle them on workers."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace], None], text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(run=run)
        return sub

    dev = command("dev", cmd_dev, "Run the receiver and a worker in one process, for development.")
    dev.add_argument("target", metavar="TARGET", help="module:attribute of your Receiver")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")

    serve = command("serve", cmd_serve, "Serve the receiver under uvicorn, for production.")
    serve.add_argument("target", metavar="TARGET", help="module:attribute of your Receiver")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    worker = command("worker", cmd_worker, "Run dramatiq worker processes for the handlers.")
    worker.add_argument("target", metavar="TARGET", help="module:attribute of your Receiver")
    worker.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    worker.add_argument("--threads", type=int, default=8)
    worker.add_argument("--queues", nargs="*", help="only these queues (default: all)")
    worker.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )

    url = command("url", cmd_url, "Print the signed webhook URL to register with Mem0.")
    url.add_argument("base_url", metavar="BASE_URL", help="public URL, e.g. https://x.com/mem0")
    url.add_argument("--target", help="module:attribute of your Receiver (default: environment)")

    command("secret", cmd_secret, "Print a new strong secret for MEM0_RECEIVER_SECRETS.")

    send = command("send", cmd_send, "POST sample Mem0 events to a receiver; a small load test.")
    send.add_argument("url", metavar="URL", help="the receiver's URL (with its token, or not)")
    send.add_argument("--event", default="memory_add", choices=EVENT_TYPES)
    send.add_argument("--memory", help="memory text (default: Name is Alex)")
    send.add_argument("--categories", help="comma-separated, for memory_categorize")
    send.add_argument("--shape", default="nested", choices=["nested", "flat"])
    send.add_argument(
        "--scheme",
        default="token",
        choices=["token", "hmac", "standard", "none"],
        help="how to sign, with MEM0_RECEIVER_SECRETS (default: token)",
    )
    send.add_argument("--count", type=int, default=1)
    send.add_argument("--concurrency", type=int, default=1)
    send.add_argument("--timeout", type=float, default=10.0, help="seconds per request")

    dead = command("dlq", cmd_dlq, "List, replay or purge events whose handlers gave up.")
    dead.add_argument("target", metavar="TARGET", help="module:attribute of your Receiver")
    action = dead.add_mutually_exclusive_group()
    action.add_argument("--replay", action="store_true", help="enqueue them again")
    action.add_argument("--purge", action="store_true", help="delete them, after confirmation")
    dead.add_argument("--handler", help="only this handler's failures")
    dead.add_argument("--id", nargs="+", help="only these message or delivery ids")
    dead.add_argument("--yes", action="store_true", help="purge without asking")

    board = command("dashboard", cmd_dashboard, "Serve the deliveries page, behind a password.")
    board.add_argument("target", metavar="TARGET", help="module:attribute of your Receiver")
    board.add_argument("--host", default="127.0.0.1")
    board.add_argument("--port", type=int, default=8001)
    board.add_argument("--username", default="admin", help="the user name to ask for")

    register = command("register", cmd_register, "Create, list or delete the webhook in Mem0.")
    register.add_argument("base_url", metavar="BASE_URL", nargs="?", help="receiver's public URL")
    register.add_argument("--event-types", default=",".join(EVENT_TYPES[:4]))
    register.add_argument("--name", default="mem0-receiver")
    register.add_argument("--project-id", help="default: the API key's project")
    register.add_argument("--api-key", help="default: MEM0_API_KEY")
    register.add_argument("--host", help="default: MEM0_HOST or https://api.mem0.ai")
    register.add_argument(
        "--target", help="module:attribute of your Receiver (default: environment)"
    )
    register.add_argument("--list", action="store_true", help="list the project's webhooks")
    register.add_argument("--delete", metavar="WEBHOOK_ID", help="delete a webhook")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except ConfigurationError as exc:
        print(f"mem0-receiver: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
