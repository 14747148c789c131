"""``helixctl status``: the daemon's summary, the command scripts and monitoring poll.

It runs on the click-free fast path (``helixctl.core.main``) as well as through click,
so both print the same thing.
"""

from __future__ import annotations

from helixctl.context import Context, echo
from helixd.protocol import Status

# typing.TYPE_CHECKING without importing typing, which costs ``helixctl status`` some
# 3 ms of its start-up (the idiom PEP 781 names; mypy reads it the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def show_status(ctx: Context) -> None:
    """``helixctl status``: the daemon's one-line summary, providers, devices and models."""
    from helixctl.render import (
        MODEL_HEADERS,
        PROVIDER_HEADERS,
        device_lines,
        duration,
        model_rows,
        provider_rows,
        table,
    )

    doc = ctx.call(Status)
    if ctx.as_json:
        ctx.emit(doc, "")
        return
    echo(
        f"helixd {doc['version']} ({doc['mode']} mode), pid {doc['pid']}, "
        f"up {duration(doc['uptime_s'])}, config {doc['config']}"
    )
    if doc.get("proxy"):
        echo(f"endpoint {doc['proxy']['url']}/v1 (OpenAI-compatible)")
    echo(doc["summary"])
    ops = _operations_line(doc)
    if ops:
        echo(ops)
    if doc["providers"]:
        echo("")
        echo(table(PROVIDER_HEADERS, provider_rows(doc["providers"])))
    devices = doc.get("devices")
    if devices:
        echo("")
        echo("\n".join(device_lines(devices)))
    if doc.get("models"):
        echo("")
        echo(table(MODEL_HEADERS, model_rows(doc["models"])))


def _operations_line(doc: dict[str, Any]) -> str:
    """``jobs: 6 (last run failed: backup); alerts: 1 error (helixctl alerts)``."""
    jobs, alerts = doc.get("jobs"), doc.get("alerts")
    if not jobs:
        return ""
    text = f"jobs: {jobs['count']}"
    notes = []
    if jobs.get("running"):
        notes.append("running: " + ", ".join(jobs["running"]))
    if jobs.get("failed"):
        notes.append("last run failed: " + ", ".join(jobs["failed"]))
    text += f" ({'; '.join(notes)})" if notes else ""
    active = {k: n for k, n in (alerts or {}).items() if n}
    if active:
        order = ("critical", "error", "warning", "info")
        counts = ", ".join(f"{active[s]} {s}" for s in order if s in active)
        return f"{text}; alerts: {counts} (helixctl alerts)"
    return f"{text}; alerts: none"
