"""The daemon's operations side: the job runner, the alert book, backups, and what ties
them to events (a provider or model changing state, a load running out of GPU memory).

The daemon builds one :class:`Operations` and hands itself over as the
:class:`~helixd.jobs.base.JobContext`; it stays free of job details.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from helixd.config.jobs import AlertsJob
from helixd.jobs.alert_check import AlertCheck
from helixd.jobs.alerts import AlertBook
from helixd.jobs.backup_ops import BackupOps, run_backup
from helixd.jobs.base import JobContext, JobOutcome
from helixd.jobs.cleanup import run_cleanup
from helixd.jobs.health import InferenceCheck
from helixd.jobs.history import JobHistory
from helixd.jobs.rotation import run_rotation
from helixd.jobs.runner import JobRunner
from helixd.jobs.update import run_update

log = logging.getLogger("helixd.jobs")

# Changes come in bursts (a restart moves a provider through three states): judge once.
EVENT_SETTLE_S = 0.2


class Operations:
    """Jobs, alerts and backups of one daemon."""

    def __init__(
        self,
        ctx: JobContext,
        alerts: AlertBook,
        budgets: Callable[[], Mapping[str, str]],
        on_state_restored: Callable[[], None],
    ) -> None:
        self.ctx = ctx
        self.alerts = alerts
        self.backups = BackupOps(ctx, on_state_restored=on_state_restored)
        self.alert_check = AlertCheck(budgets=budgets)
        self._due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

        async def backup_job(ctx: JobContext, job: Any) -> JobOutcome:
            return await run_backup(ctx, job, self.backups)

        async def cleanup_job(ctx: JobContext, job: Any) -> JobOutcome:
            return await run_cleanup(ctx, job, self.backups)

        self.jobs = JobRunner(
            ctx,
            JobHistory(ctx.paths.state_dir / "jobs.json"),
            {
                "health": InferenceCheck(),
                "update": run_update,
                "backup": backup_job,
                "cleanup": cleanup_job,
                "rotation": run_rotation,
                "alerts": self.alert_check,
            },
        )

    def start(self) -> None:
        """Schedule the config's jobs; judge alert rules on events from now on."""
        self.alerts.configure(self._webhooks())
        self.jobs.start(self.ctx.loaded.config.all_jobs)
        self._task = asyncio.create_task(self._judge_on_events(), name="alerts on events")

    def configure(self) -> None:
        """Take up a reloaded config."""
        self.alerts.configure(self._webhooks())
        self.jobs.configure(self.ctx.loaded.config.all_jobs)

    async def stop(self) -> None:
        """Stop scheduling and running jobs (deliveries of alerts end in :meth:`close`)."""
        if self._task is not None:
            self._task.cancel()
        await self.jobs.stop()

    async def close(self) -> None:
        """Let alert deliveries in flight finish briefly; helixd is about to exit."""
        await self.alerts.close()

    def changed(self) -> None:
        """A provider or a model changed state: judge the alert rules soon."""
        self._due.set()

    def load_outcome(self, model: str, failed: str | None, out_of_memory: bool) -> None:
        """Residency's hook: a load ended (``failed`` says why it did not)."""
        if failed is None:
            self.alerts.resolve(f"gpu_oom:{model}", "it loaded")
        elif out_of_memory:
            self.alerts.fire(
                f"gpu_oom:{model}",
                "error",
                f"loading {model} ran out of GPU memory even after evicting idle models: "
                f"{failed}; lower its size (ctx, gpu_layers) or unpin other models",
                source="residency",
            )

    def _alerts_job(self) -> AlertsJob | None:
        jobs = self.ctx.loaded.config.all_jobs.values()
        return next((j for j in jobs if isinstance(j, AlertsJob)), None)

    def _webhooks(self) -> list[Any]:
        job = self._alerts_job()
        return list(job.webhooks) if job is not None else []

    async def _judge_on_events(self) -> None:
        while True:
            await self._due.wait()
            await asyncio.sleep(EVENT_SETTLE_S)
            self._due.clear()
            job = self._alerts_job()
            if job is None or not job.enabled:
                continue
            try:
                await self.alert_check.evaluate(self.ctx, job)
            except Exception:
                log.exception("judging the alert rules failed")

    def status(self) -> dict[str, Any]:
        """For ``GET /v1/status``: jobs summary and active alerts per severity."""
        return {"jobs": self.jobs.summary(), "alerts": self.alerts.counts()}
