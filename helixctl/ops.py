"""``helixctl jobs``, ``run``, ``backup`` and ``alerts``: the daemon's scheduled operations."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from helixctl.context import EXIT_FAILED, Context
from helixctl.group import cli, pass_ctx, timeout_option
from helixctl.render import duration, table
from helixd import protocol

JOB_HEADERS = ("JOB", "KIND", "SCHEDULE", "NEXT RUN", "LAST RUN", "RESULT", "MESSAGE")


def _when(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    delta = epoch - now
    return f"in {duration(delta)}" if delta >= 0 else f"{duration(-delta)} ago"


def job_rows(jobs: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per job for ``helixctl jobs``."""
    now = time.time()
    rows = []
    for job in jobs:
        last = job.get("last_run") or {}
        if job.get("running"):
            next_run = "running now"
        elif not job["enabled"]:
            next_run = "off (run on demand)"
        else:
            next_run = _when(job.get("next_run"), now)
        rows.append(
            [
                job["name"],
                job["kind"],
                job["schedule"],
                next_run,
                _when(last.get("started"), now) if last else "never",
                last.get("result", "-") if last else "-",
                _one_line(last.get("message", "")) if last else "",
            ]
        )
    return rows


def _one_line(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@cli.command(help=protocol.ListJobs.help())
@pass_ctx
def jobs(ctx: Context) -> None:
    doc = ctx.call(protocol.ListJobs)
    ctx.emit(doc, table(JOB_HEADERS, job_rows(doc["jobs"])))


@cli.command(help=protocol.RunJob.help())
@click.argument("job")
@timeout_option(
    3600.0, "seconds to wait for the result (the run goes on in helixd if this runs out)"
)
@pass_ctx
def run(ctx: Context, job: str, timeout: float) -> None:
    doc = ctx.call(protocol.RunJob, timeout=timeout, name=job)
    r = doc["run"]
    ctx.emit(doc, f"{r['job']}: {r['result']} in {r['duration_s']:.1f} s: {r['message']}")
    if r["result"] != "ok":
        sys.exit(EXIT_FAILED)


@cli.group(invoke_without_command=True)
@click.pass_context
def backup(click_ctx: click.Context) -> None:
    """List backups (default), create one, or restore one."""
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(backup_list)


BACKUP_HEADERS = ("BACKUP", "CREATED", "SIZE", "LABEL")


@backup.command("list", help=protocol.ListBackups.help())
@pass_ctx
def backup_list(ctx: Context) -> None:
    doc = ctx.call(protocol.ListBackups)
    rows = [[b["id"], b["created"], _size(b["size"]), b.get("label") or ""] for b in doc["backups"]]
    human = table(BACKUP_HEADERS, rows) if rows else "no backups yet (helixctl backup create)"
    ctx.emit(doc, f"{human}\nin {doc['dir']}")


@backup.command("create", help=protocol.CreateBackup.help())
@pass_ctx
def backup_create(ctx: Context) -> None:
    doc = ctx.call(protocol.CreateBackup, timeout=600)
    b = doc["backup"]
    ctx.emit(doc, f"wrote {b['id']} ({_size(b['size'])}): {b['path']}")


@backup.command("restore", help=protocol.RestoreBackup.help())
@click.argument("backup_id", metavar="ID")
@pass_ctx
def backup_restore(ctx: Context, backup_id: str) -> None:
    doc = ctx.call(protocol.RestoreBackup, timeout=600, id=backup_id)
    lines = [f"restored {doc['restored']}: {len(doc['files'])} file(s); config reloaded"]
    lines += [f"  {path}" for path in doc["files"]]
    lines += [f"skipped: {note}" for note in doc.get("skipped", [])]
    lines += [f"note: {note}" for note in doc.get("notes", [])]
    lines.append(
        f"the files it replaced are in {doc['safety_backup']} "
        f"(helixctl backup restore {doc['safety_backup']} undoes this)"
    )
    ctx.emit(doc, "\n".join(lines))


ALERT_HEADERS = ("SEVERITY", "ALERT", "SINCE", "MESSAGE")


@cli.command(help=protocol.ListAlerts.help())
@click.option("--all", "include_resolved", is_flag=True, help="also show resolved alerts")
@pass_ctx
def alerts(ctx: Context, include_resolved: bool) -> None:
    doc = ctx.call(protocol.ListAlerts, {"all": "1"} if include_resolved else None)
    now = time.time()
    active = doc.get("active", [])
    rows = [
        [a["severity"], a["key"], _when(a["fired_at_epoch"], now), a["message"]] for a in active
    ]
    lines = [table(ALERT_HEADERS, rows) if rows else "no active alerts"]
    if include_resolved:
        resolved = doc.get("resolved", [])
        lines += ["", "resolved:"] if resolved else []
        lines += [
            f"  {a['key']} ({a['severity']}): resolved {_when(a['resolved_at_epoch'], now)}; "
            f"{a.get('resolution') or ''}"
            for a in resolved
        ]
    ctx.emit(doc, "\n".join(lines))


def _size(n: int) -> str:
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024:.1f} KiB"
