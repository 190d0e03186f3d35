"""The deliveries page's HTML: plain strings, every value escaped, no script.

Event types, ids, handler names and error messages all come from outside (a
webhook body, a handler's exception), so every one of them goes through
:func:`html.escape` on its way into a page. The pages carry no JavaScript at
all; the stylesheet is inline and allowed by its hash in the
Content-Security-Policy that dashboard.py sends.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable
from datetime import datetime, timezone

from .errors import PayloadError
from .events import event_from_json
from .failures import Failure
from .snapshot import Snapshot

__all__ = ["STYLE_HASH", "confirm_page", "index_page", "message_page"]

CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1d2430;background:#f4f6f9}
main{max-width:1100px;margin:0 auto;padding:12px}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:6px 16px;margin-bottom:8px}
h1{font-size:1.3rem;margin:0}
h2{font-size:1.05rem;margin:0}
a{color:#1f5fbf}
.muted{color:#5b6675;font-size:.87rem}
.flash{background:#e6f4ea;border:1px solid #9ccfa9;border-radius:8px;padding:10px 12px;margin:8px 0}
section{background:#fff;border:1px solid #dde2ea;border-radius:10px;padding:12px;margin:12px 0}
.head{display:flex;flex-wrap:wrap;align-items:center;gap:8px;justify-content:space-between;
margin-bottom:8px}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:8px}
.stat{border:1px solid #e3e7ee;border-radius:8px;padding:8px 10px}
.stat b{display:block;font-size:1.35rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #edf0f4;vertical-align:top}
th{font-size:.8rem;color:#5b6675;font-weight:600;white-space:nowrap}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace}
.id{word-break:break-all}
.nowrap{white-space:nowrap}
.nowrap .actions{flex-wrap:nowrap}
.badge{display:inline-block;border-radius:999px;padding:1px 8px;margin:1px 2px 1px 0;
font-size:.8rem;border:1px solid transparent;white-space:nowrap}
.ok{background:#e6f4ea;color:#1e6b34;border-color:#b7dfc1}
.retrying{background:#fff4d6;color:#7a5600;border-color:#f0d78c}
.failed,.crashed{background:#fde8e8;color:#9b1c1c;border-color:#f3b4b4}
.skipped,.other{background:#eef0f3;color:#4a5361;border-color:#d5dae1}
.detail td{border-bottom:2px solid #dde2ea;background:#fbfbfd}
.detail pre{margin:0;white-space:pre-wrap;word-break:break-word;font-size:.85rem}
form{display:inline}
button,.button{font:inherit;font-size:.9rem;padding:7px 12px;min-height:36px;border-radius:7px;
border:1px solid #b8c1ce;background:#fff;color:#1d2430;cursor:pointer;text-decoration:none;
display:inline-block}
button.primary{background:#1f5fbf;border-color:#1f5fbf;color:#fff}
button.danger{color:#9b1c1c;border-color:#e6a3a3}
.actions{display:flex;flex-wrap:wrap;gap:6px}
.confirm{max-width:560px}
.confirm ul{padding-left:18px}
@media (max-width:640px){
main{padding:8px}
table.stack thead{display:none}
table.stack,table.stack tbody,table.stack tr,table.stack td{display:block;width:100%}
table.stack tr{border-bottom:2px solid #dde2ea;padding:6px 0}
table.stack td{border:0;padding:3px 4px}
table.stack td[data-label]{display:grid;grid-template-columns:6.5em 1fr;gap:8px;
align-items:baseline}
table.stack td[data-label]>*{justify-self:start}
table.stack td[data-label]::before{content:attr(data-label);font-size:.75rem;color:#5b6675}
}
"""
#: For the Content-Security-Policy: the one inline stylesheet allowed.
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()

_STATUSES = ("ok", "retrying", "failed", "crashed", "skipped")


def e(value: object) -> str:
    """Escape for HTML text and quoted attributes."""
    return html.escape(str(value), quote=True)


def ago(then: float, *, now: float) -> str:
    """``<time>`` saying how long ago ``then`` was, with the UTC time as its title."""
    stamp = datetime.fromtimestamp(then, timezone.utc)
    seconds = max(0, int(now - then))
    if seconds < 60:
        text = f"{seconds} s ago"
    elif seconds < 3600:
        text = f"{seconds // 60} min ago"
    elif seconds < 86_400:
        text = f"{seconds // 3600} h ago"
    else:
        text = f"{seconds // 86_400} d ago"
    iso = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f'<time datetime="{iso}" title="{stamp:%Y-%m-%d %H:%M:%S} UTC">{text}</time>'


def _badge(label: str, status: str) -> str:
    kind = status if status in _STATUSES else "other"
    return f'<span class="badge {kind}">{e(label)}: {e(status)}</span>'


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex"><link rel="icon" href="data:,">'
        f"<title>{e(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{e(name)}" value="{e(value)}">'


def _button_form(
    root: str, action: str, csrf: str, label: str, fields: Iterable[tuple[str, str]], css: str
) -> str:
    inputs = "".join(_hidden(name, value) for name, value in fields)
    return (
        f'<form method="post" action="{e(root)}/{action}">{_hidden("csrf", csrf)}{inputs}'
        f'<button type="submit" class="{css}">{e(label)}</button></form>'
    )


def memory_text(failure: Failure) -> str | None:
    """The memory text the failed event carried, if any."""
    data = failure.message.get("options", {}).get("mem0_event")
    try:
        event = event_from_json(data) if isinstance(data, dict) else None
    except PayloadError:
        return None
    return getattr(event, "memory", None)


def _plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


def _stat(label: str, value: object, note: str = "") -> str:
    note_html = f'<span class="muted">{e(note)}</span>' if note else ""
    return f'<div class="stat"><span class="muted">{label}</span><b>{e(value)}</b>{note_html}</div>'


def _summary(snapshot: Snapshot) -> str:
    activity = snapshot.activity
    order = {status: i for i, status in enumerate(_STATUSES)}
    runs = sorted(activity.runs.items(), key=lambda item: (order.get(item[0], 99), item[0]))
    stats = [
        _stat(
            "Deliveries, last minute",
            f"{'≥ ' if activity.partial else ''}{activity.rate:.2f}/s",
            _plural(activity.deliveries, "delivery", "deliveries"),
        ),
        _stat(
            "Handler outcomes, last minute",
            sum(activity.runs.values()),
            " · ".join(f"{status} {n}" for status, n in runs),
        ),
        _stat("Failed events stored", snapshot.failure_count),
    ]
    for name, depth in snapshot.depths.items():
        note = "delayed retries" if name.endswith(".DQ") else "waiting"
        stats.append(_stat(f"Queue <code>{e(name)}</code>", depth, note))
    return f'<section aria-label="Summary"><div class="stats">{"".join(stats)}</div></section>'


def _failures(snapshot: Snapshot, *, now: float, root: str, csrf: str, show_text: bool) -> str:
    count = snapshot.failure_count
    head = f'<div class="head"><h2 id="failures">Failed events ({count})</h2>'
    if count:
        head += (
            '<div class="actions">'
            + _button_form(root, "replay", csrf, "Replay all", [("all", "1")], "primary")
            + _button_form(root, "purge", csrf, "Purge all", [("all", "1")], "danger")
            + "</div>"
        )
    head += "</div>"
    if not snapshot.failures:
        return f'<section>{head}<p class="muted">No failed events.</p></section>'
    rows = []
    for f in snapshot.failures:
        error = f.error_type or f.reason
        one = [("id", f.id)]
        rows.append(
            f'<tr><td data-label="Failed" class="nowrap">{ago(f.failed_at, now=now)}</td>'
            f'<td data-label="Handler" class="nowrap"><code>{e(f.handler)}</code></td>'
            f'<td data-label="Type">{e(f.event_type)}</td>'
            f'<td data-label="Memory id"><code class="id">{e(f.memory_id or "-")}</code></td>'
            f'<td data-label="Delivery"><code class="id">{e(f.delivery_id)}</code></td>'
            f'<td data-label="Attempts">{f.attempts}</td>'
            f'<td data-label="Error"><span class="badge failed">{e(error)}</span></td>'
            f'<td data-label="Actions" class="nowrap"><div class="actions">'
            f"{_button_form(root, 'replay', csrf, 'Replay', one, '')}"
            f"{_button_form(root, 'purge', csrf, 'Purge', one, 'danger')}</div></td></tr>"
        )
        if show_text:
            text = memory_text(f)
            rows.append(
                '<tr class="detail"><td colspan="8"><pre>'
                f"{e(f.error_type or f.reason)}{': ' + e(f.error) if f.error else ''}"
                f"\nmemory: {e(text) if text is not None else '(none)'}</pre></td></tr>"
            )
    more = len(snapshot.failures) < count
    return (
        f"<section>{head}"
        '<div class="scroll"><table class="stack"><thead><tr><th>Failed</th><th>Handler</th>'
        "<th>Type</th><th>Memory id</th><th>Delivery</th><th>Attempts</th><th>Error</th>"
        f"<th></th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        + (f'<p class="muted">The oldest {len(snapshot.failures)} are shown.</p>' if more else "")
        + "</section>"
    )


def _deliveries(snapshot: Snapshot, *, now: float) -> str:
    if not snapshot.deliveries:
        body = '<p class="muted">No deliveries handled yet.</p>'
    else:
        rows = "".join(
            f'<tr><td data-label="Received" class="nowrap">{ago(d.received_at, now=now)}</td>'
            f'<td data-label="Delivery"><code class="id">{e(d.delivery_id)}</code></td>'
            f'<td data-label="Type">{e(d.event_type)}</td>'
            f'<td data-label="Memory id"><code class="id">{e(d.memory_id or "-")}</code></td>'
            f'<td data-label="Handlers"><div>'
            f"{''.join(_badge(name, status) for name, status in sorted(d.handlers.items()))}"
            "</div></td></tr>"
            for d in snapshot.deliveries
        )
        body = (
            '<div class="scroll"><table class="stack"><thead><tr><th>Received</th>'
            "<th>Delivery</th><th>Type</th><th>Memory id</th><th>Handlers</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>"
        )
    return (
        f'<section><div class="head"><h2 id="deliveries">Recent deliveries '
        f"({len(snapshot.deliveries)})</h2></div>{body}</section>"
    )


def index_page(
    snapshot: Snapshot, *, now: float, root: str, csrf: str, show_text: bool, flash: str | None
) -> str:
    toggle = (
        f'<a href="{e(root)}/">Hide error messages and memory text</a>'
        if show_text
        else f'<a href="{e(root)}/?show=text">Show error messages and memory text</a>'
    )
    body = (
        f"<header><h1>mem0-receiver deliveries</h1>"
        f'<span class="muted">broker {e(snapshot.broker)}</span>'
        f'<a href="{e(root)}/{"?show=text" if show_text else ""}">Refresh</a>{toggle}</header>'
        + (f'<p class="flash" role="status">{e(flash)}</p>' if flash else "")
        + _summary(snapshot)
        + _failures(snapshot, now=now, root=root, csrf=csrf, show_text=show_text)
        + _deliveries(snapshot, now=now)
    )
    return _page("mem0-receiver deliveries", body)


def confirm_page(
    action: str, failures: list[Failure], *, root: str, csrf: str, remaining: int
) -> str:
    """The "Replay 3 failed events? [Confirm] [Cancel]" page, without memory text."""
    verb = action.capitalize()
    items = "".join(
        f"<li><code>{e(f.handler)}</code> · {e(f.event_type)} · memory "
        f"<code>{e(f.memory_id or '-')}</code> · delivery <code>{e(f.delivery_id)}</code></li>"
        for f in failures[:20]
    )
    if len(failures) > 20:
        items += f"<li>… and {len(failures) - 20} more</li>"
    they = "It is" if len(failures) == 1 else "They are"
    warning = (
        f"{they} enqueued again with a fresh set of retries."
        if action == "replay"
        else f"{they} deleted for good and will not run again."
    )
    if remaining:
        warning += f" {_plural(remaining, 'other failed event')} stay in the store."
    fields = [("confirm", "yes"), *(("id", f.id) for f in failures)]
    body = (
        f'<section class="confirm"><h1>{verb} {_plural(len(failures), "failed event")}?</h1>'
        f'<p>{e(warning)}</p><ul>{items}</ul><div class="actions">'
        f"{_button_form(root, action, csrf, 'Confirm', fields, 'primary')}"
        f'<a class="button" href="{e(root)}/">Cancel</a></div></section>'
    )
    return _page(f"{verb} failed events?", body)


def message_page(title: str, text: str, *, root: str = "") -> str:
    body = (
        f'<section class="confirm"><h1>{e(title)}</h1><p>{e(text)}</p>'
        f'<p><a href="{e(root)}/">Back to the deliveries page</a></p></section>'
    )
    return _page(title, body)
