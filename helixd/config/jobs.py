"""``[jobs.NAME]``: scheduled operations, one table per job, its options chosen by ``kind``.

Every job has a schedule (``interval`` or a five-field ``cron`` in local time) and may be
turned off with ``enabled = false``; a turned-off job still runs on demand
(``helixctl run NAME``). Jobs of the kinds health, update, backup, cleanup and alerts
exist even when the config names none (:func:`effective_jobs`); update is off unless
configured on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from helixd.config.types import Seconds, Strict

JOB_KINDS = ("health", "update", "backup", "cleanup", "rotation", "alerts")
SEVERITIES = ("info", "warning", "error", "critical")
Severity = Literal["info", "warning", "error", "critical"]


def check_cron(value: str) -> str:
    """Refuse a cron expression APScheduler cannot read, with its own reason."""
    from apscheduler.triggers.cron import CronTrigger  # imported here: heavy, daemon-only

    try:
        CronTrigger.from_crontab(value)
    except ValueError as exc:
        raise ValueError(
            f"expected a five-field cron expression such as '0 3 * * *' "
            f"(minute hour day month weekday); {exc}; got {value!r}"
        ) from None
    return value


class JobBase(Strict):
    """What every job has: when it runs, whether it is on, and how long a run may take."""

    interval: Seconds | None = None
    cron: str | None = None
    enabled: bool = True
    # A run still going after this long is cancelled and recorded as failed.
    timeout_s: Seconds = 600.0

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @model_validator(mode="after")
    def _one_schedule(self) -> JobBase:
        if self.interval is not None and self.cron is not None:
            raise ValueError("set either interval or cron, not both")
        if self.interval is None and self.cron is None:
            raise ValueError("needs a schedule: interval = '30s' or cron = '0 3 * * *'")
        return self

    @property
    def schedule(self) -> str:
        """``every 30s`` or ``cron 0 3 * * *``, for listings."""
        if self.cron is not None:
            return f"cron {self.cron}"
        assert self.interval is not None
        return f"every {_short_duration(self.interval)}"


class HealthJob(JobBase):
    """Asks each loaded model for one token; restarts what does not answer."""

    kind: Literal["health"]
    timeout_s: Seconds = 120.0
    # Seconds one model has to answer its one-token request.
    request_timeout_s: Seconds = 30.0
    # Consecutive failed runs before a model's server is restarted.
    failures: int = Field(default=1, ge=1, le=100)
    # False: only report and alert, never restart.
    recover: bool = True
    # Only these models (default: every loaded local model).
    models: list[str] = Field(default_factory=list)


class UpdateJob(JobBase):
    """Runs the providers' update commands; rolls back an update that breaks the provider."""

    kind: Literal["update"]
    timeout_s: Seconds = 3600.0
    # Only these providers (default: every provider with an [providers.NAME.update] table).
    providers: list[str] = Field(default_factory=list)
    # Re-pull Ollama models marked ``refresh = true``.
    refresh_models: bool = True
    # How long a restarted provider has to become ready and answer.
    verify_s: Seconds = 300.0


class BackupJob(JobBase):
    """A tar.gz of the config, the state and extra paths, with daily/weekly retention."""

    kind: Literal["backup"]
    keep_daily: int = Field(default=7, ge=0, le=3650)
    keep_weekly: int = Field(default=4, ge=0, le=520)
    # Extra files or folders to keep (Modelfiles, provider configs); relative to the config.
    paths: list[Path] = Field(default_factory=list)

    @model_validator(mode="after")
    def _keeps_something(self) -> BackupJob:
        if self.keep_daily == 0 and self.keep_weekly == 0:
            raise ValueError("keep_daily and keep_weekly are both 0: every backup would be pruned")
        return self


class CleanupJob(JobBase):
    """Prunes rotated logs, backups past retention and stale temporary files."""

    kind: Literal["cleanup"]
    # Rotated provider logs (``NAME.log.1`` …) older than this are deleted.
    log_max_age: Seconds = 14 * 86400.0
    # Temporary files left by an interrupted write, older than this.
    temp_max_age: Seconds = 3600.0


class RotationJob(JobBase):
    """Makes a set of models resident at scheduled times: load these, unload those."""

    kind: Literal["rotation"]
    load: list[str] = Field(default_factory=list)
    unload: list[str] = Field(default_factory=list)
    # true: the loaded set is pinned (kept until the next rotation, whatever its
    # keep_alive) and the unloaded set unpinned, unless its pin comes from the config.
    pin: bool = False

    @model_validator(mode="after")
    def _does_something(self) -> RotationJob:
        if not self.load and not self.unload:
            raise ValueError("names no models: set load = [...] and/or unload = [...]")
        both = sorted(set(self.load) & set(self.unload))
        if both:
            raise ValueError(f"{', '.join(both)} in both load and unload")
        return self


class Webhook(Strict):
    """An URL that receives each alert as JSON when it fires and when it resolves."""

    url: str
    # Alerts below this severity are not sent (they are still logged and kept).
    min_severity: Severity = "warning"
    timeout_s: Seconds = 5.0
    retries: int = Field(default=3, ge=0, le=20)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL; got {value!r}")
        return value


class AlertsJob(JobBase):
    """Evaluates the alert rules on a timer (events evaluate them at once as well)."""

    kind: Literal["alerts"]
    timeout_s: Seconds = 60.0
    webhooks: list[Webhook] = Field(default_factory=list)
    # A provider failed or unhealthy this long raises an error alert.
    provider_down_for: Seconds = 120.0
    # More than queue_backlog requests waiting for queue_backlog_for raises a warning.
    queue_backlog: int = Field(default=32, ge=1)
    queue_backlog_for: Seconds = 120.0
    # Free space under this share of a disk (state dir, log dir, model dirs) raises a warning;
    # under half of it, an error.
    disk_free_percent: float = Field(default=10.0, gt=0, lt=100)
    disk_paths: list[Path] = Field(default_factory=list)


JobConfig = Annotated[
    HealthJob | UpdateJob | BackupJob | CleanupJob | RotationJob | AlertsJob,
    Field(discriminator="kind"),
]

JOB_MODELS: dict[str, type[JobBase]] = {
    "health": HealthJob,
    "update": UpdateJob,
    "backup": BackupJob,
    "cleanup": CleanupJob,
    "rotation": RotationJob,
    "alerts": AlertsJob,
}

# Jobs that exist when the config names no job of their kind (keyed by kind and name).
DEFAULT_JOBS: dict[str, dict[str, object]] = {
    "health": {"kind": "health", "interval": 30.0},
    "update": {"kind": "update", "cron": "0 * * * *", "enabled": False},
    "backup": {"kind": "backup", "cron": "0 3 * * *"},
    "cleanup": {"kind": "cleanup", "cron": "30 3 * * *"},
    "alerts": {"kind": "alerts", "interval": 15.0},
}


def default_job(kind: str) -> JobConfig:
    """The built-in job of ``kind``."""
    from pydantic import TypeAdapter

    adapter: TypeAdapter[JobConfig] = TypeAdapter(JobConfig)
    return adapter.validate_python(DEFAULT_JOBS[kind])


def effective_jobs(configured: dict[str, JobConfig]) -> dict[str, JobConfig]:
    """The configured jobs plus a default one for each kind the config leaves out."""
    jobs = dict(configured)
    kinds = {job.kind for job in configured.values()}
    for kind in DEFAULT_JOBS:
        if kind not in kinds and kind not in jobs:
            jobs[kind] = default_job(kind)
    return jobs


def _short_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
