"""The record of job runs: what ran, when, how long, and how it ended, kept across restarts."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from helixd.state import atomic_write_json, read_json

log = logging.getLogger("helixd.jobs")

RunResult = Literal["running", "ok", "failed"]
Trigger = Literal["schedule", "manual"]
# Runs kept per job: enough to see a pattern, small enough to rewrite after every run.
KEEP_RUNS = 20


def iso(epoch: float | None) -> str | None:
    """``2026-11-24T03:00:00Z`` (what the API and the CLI show)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class JobRun:
    """One run of one job."""

    job: str
    kind: str
    trigger: Trigger
    started: float
    result: RunResult = "running"
    duration_s: float | None = None
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The run for the API, with its start as ISO 8601 as well."""
        return asdict(self) | {"started_at": iso(self.started)}

    @classmethod
    def from_json(cls, data: Any) -> JobRun | None:
        """A stored run; None when the record is not one (a damaged or older file)."""
        try:
            run = cls(
                job=str(data["job"]),
                kind=str(data["kind"]),
                trigger=data.get("trigger", "schedule"),
                started=float(data["started"]),
                result=data.get("result", "failed"),
                duration_s=data.get("duration_s"),
                message=str(data.get("message", "")),
                details=dict(data.get("details") or {}),
            )
        except (KeyError, TypeError, ValueError):
            return None
        if run.result == "running":  # helixd stopped during it
            run.result, run.message = "failed", "interrupted: helixd stopped during the run"
        return run


class JobHistory:
    """The last :data:`KEEP_RUNS` runs of each job, in ``jobs.json`` in the state dir."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.runs: dict[str, list[JobRun]] = {}
        lost = "the job history starts empty"
        record = read_json(path, {}, lost=lost) if path is not None else {}
        for name, runs in record.items() if isinstance(record, dict) else ():
            loaded = [r for r in map(JobRun.from_json, runs if isinstance(runs, list) else ()) if r]
            if loaded:
                self.runs[str(name)] = loaded[-KEEP_RUNS:]

    def last(self, job: str) -> JobRun | None:
        """The latest run of ``job``."""
        runs = self.runs.get(job)
        return runs[-1] if runs else None

    def add(self, run: JobRun) -> None:
        """Record a finished run (the caller saves)."""
        runs = self.runs.setdefault(run.job, [])
        runs.append(run)
        del runs[:-KEEP_RUNS]

    def save(self) -> None:
        """Write the record atomically; a failure is logged, never raised."""
        if self.path is None:
            return
        data = {name: [r.as_json() for r in runs] for name, runs in self.runs.items()}
        try:
            atomic_write_json(self.path, data)
        except OSError as exc:
            log.warning("cannot record job history in %s: %s", self.path, exc)
