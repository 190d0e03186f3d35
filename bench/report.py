"""The output of the HTTP runs: one line per run, the summary table and the chart."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bench.results import RunResult, Summary
from bench.session import LOADGEN_CPU, SERVER_CPU, Args


def print_run(run: RunResult) -> None:
    w, d = run.wrk, run.delivery
    in_redis = "-" if d.enqueued is None else str(d.enqueued)
    print(
        f"  [round {run.round}] {run.app:<14} c={run.concurrency:<3} {w.rps:7.0f} req/s  "
        f"p50 {w.p50_ms:7.2f} ms  p99 {w.p99_ms:7.2f} ms  errors {w.error_count}  "
        f"202s {d.accepted}  in Redis {in_redis}  unanswered {d.unanswered}  "
        f"server CPU {run.server_cpu_pct:.0f}%  wrk CPU {w.cpu_pct:.0f}%  -> {d.verdict()}"
    )


TABLE_HEADERS = (
    "app", "conc", "req/s", "spread", "vs empty", "p50 ms", "p99 ms", "errors", "202s", "in Redis",
    "unanswered", "srv CPU", "wrk CPU", "enqueued vs acknowledged",
)  # fmt: skip


def table_rows(summaries: Sequence[Summary]) -> list[list[str]]:
    empty = {s.concurrency: s.rps for s in summaries if s.app == "empty" and s.runs}
    rows = []
    for s in summaries:
        if not s.runs:
            rows.append([s.app, str(s.concurrency), *["-"] * 11, s.problem or ""])
            continue
        enqueued = [r.delivery.enqueued for r in s.runs]
        verdict = s.delivery_verdict() + (f"; then {s.problem}" if s.problem else "")
        rows.append(
            [
                s.app,
                str(s.concurrency),
                f"{s.rps:.0f}",
                f"±{s.spread_pct:.0f}%",
                f"{s.rps / empty[s.concurrency]:.2f}" if s.concurrency in empty else "-",
                f"{s.median(lambda r: r.wrk.p50_ms):.2f}",
                f"{s.median(lambda r: r.wrk.p99_ms):.2f}",
                str(sum(r.wrk.error_count for r in s.runs)),
                str(sum(r.delivery.accepted for r in s.runs)),
                "-" if None in enqueued else str(sum(e or 0 for e in enqueued)),
                str(sum(r.delivery.unanswered for r in s.runs)),
                f"{s.median(lambda r: r.server_cpu_pct):.0f}%",
                f"{s.median(lambda r: r.wrk.cpu_pct):.0f}%",
                verdict,
            ]
        )
    return rows


def print_table(summaries: Sequence[Summary]) -> None:
    rows = table_rows(summaries)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(TABLE_HEADERS)]
    header = "  ".join(h.ljust(w) for h, w in zip(TABLE_HEADERS, widths, strict=True))
    print(header.rstrip())
    print("-" * len(header.rstrip()))
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for s in summaries:
        if "MISMATCH" in s.delivery_verdict():
            print(f"!!! MISMATCH {s.app} c={s.concurrency}: {s.delivery_verdict()}")


def write_chart(path: Path, summaries: Sequence[Summary], args: Args) -> None:
    """Grouped bars: req/s relative to the empty endpoint, per app and concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    apps = list(dict.fromkeys(s.app for s in summaries))
    by_key = {(s.app, s.concurrency): s for s in summaries}
    empty = {c: s.rps for (app, c), s in by_key.items() if app == "empty" and s.runs}
    width = 0.8 / len(args.concurrency)
    fig, ax = plt.subplots(figsize=(max(2.2 * len(apps) + 2, 7), 4.8))
    for i, c in enumerate(args.concurrency):
        offset = (i - (len(args.concurrency) - 1) / 2) * width
        xs, ratios, labels = [], [], []
        for x, app in enumerate(apps):
            s = by_key[app, c]
            if s.runs and c in empty:
                xs.append(x + offset)
                ratios.append(s.rps / empty[c])
                labels.append(f"{s.rps / empty[c]:.2f}\n{s.rps:.0f}/s")
        bars = ax.bar(xs, ratios, width, label=f"concurrency {c}")
        ax.bar_label(bars, labels, fontsize=7, padding=2)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(apps)))
    ax.set_xticklabels(
        [app if any(by_key[app, c].runs for c in args.concurrency) else f"{app}\n(n/a)"
         for app in apps]
    )  # fmt: skip
    ax.set_ylabel("req/s relative to the empty endpoint")
    ax.set_ylim(0, 1.3)
    ax.set_title(
        f"Mem0 webhook receivers: median req/s of {args.rounds} x {args.duration}s\n"
        f"uvicorn on CPU {SERVER_CPU}, wrk + Redis on CPU {LOADGEN_CPU} (nproc={os.cpu_count()})",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
