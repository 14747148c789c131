"""The alerts job: read the daemon's state into the rules' snapshot and sync the alert book.

The rules themselves are pure (:mod:`helixd.jobs.alert_rules`); this module gathers what
they judge: provider states, whether each model could serve a request, remote budgets
and free disk space in the state, log and model folders. The daemon also calls
:meth:`AlertCheck.evaluate` when a provider or a model changes state, so an alert does
not wait for the next tick; those calls are not recorded as job runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from helixd.config.jobs import AlertsJob
from helixd.jobs.alert_rules import AlertRules, DiskView, ModelView, ProviderView, RulesInput
from helixd.jobs.base import JobContext, JobOutcome
from helixd.scheduler import ModelState, ModelStatus
from helixd.supervisor.process import ProcessState

_RESIDENT = (ModelState.LOADED, ModelState.LOADING, ModelState.SLEEPING, ModelState.UNLOADING)


class AlertCheck:
    """Evaluates the alert rules; keeps the rules' memory of when each condition began."""

    def __init__(
        self,
        budgets: Callable[[], Mapping[str, str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budgets = budgets
        self.clock = clock
        self.rules: AlertRules | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, ctx: JobContext, job: AlertsJob) -> JobOutcome:
        await self.evaluate(ctx, job)
        active = ctx.alerts.active()
        if not active:
            return JobOutcome(True, "no active alerts")
        worst = active[0]
        return JobOutcome(
            True,
            f"{len(active)} active alert(s); the worst: [{worst.severity}] {worst.key}",
            {"active": [a.key for a in active]},
        )

    async def evaluate(self, ctx: JobContext, job: AlertsJob) -> None:
        """Judge the rules on the daemon's state now and fire or resolve alerts."""
        async with self._lock:  # a timer tick and an event must not interleave
            if self.rules is None:
                self.rules = AlertRules(job)
            else:
                self.rules.configure(job)
            disks = await asyncio.to_thread(disk_views, _disk_paths(ctx, job))
            snapshot = RulesInput(
                providers=[
                    ProviderView(p.spec.name, str(p.state), p.message)
                    for p in ctx.supervisor.processes.values()
                ],
                models=[_model_view(ctx, m) for m in ctx.residency.views()],
                budgets_exceeded=dict(self.budgets()),
                disks=disks,
            )
            conditions, pending = self.rules.evaluate(snapshot, self.clock())
            ctx.alerts.sync("rules", conditions, pending)


def _model_view(ctx: JobContext, model: ModelStatus) -> ModelView:
    return ModelView(model.name, str(model.state), _servable(ctx, model), model.queued)


def _servable(ctx: JobContext, model: ModelStatus) -> bool:
    """Could a request for this model be served now or after a load?"""
    if model.state in _RESIDENT:
        return True
    if model.state == ModelState.FAILED:
        return False
    server = ctx.supervisor.processes.get(model.provider)
    if server is not None:  # a one-server provider: only while its server is up
        return server.state == ProcessState.READY
    return True  # a per-model server is started by the load; a remote is asked


def _disk_paths(ctx: JobContext, job: AlertsJob) -> list[Path]:
    """The state and log dirs, ``disk_paths`` (relative to the config file), model files."""
    base = ctx.loaded.path.parent
    paths = [ctx.paths.state_dir, ctx.paths.log_dir]
    paths += [p if p.is_absolute() else base / p for p in (d.expanduser() for d in job.disk_paths)]
    paths += [m.path for m in ctx.loaded.config.models.values() if m.path is not None]
    return paths


def disk_views(paths: Iterable[Path]) -> list[DiskView]:
    """Free and total bytes of each path's filesystem (each filesystem once).

    Blocking (a model folder may sit on a slow network disk): run it in a thread.
    """
    seen: set[int] = set()
    views = []
    for path in paths:
        try:
            device = os.stat(path).st_dev
            stats = os.statvfs(path)
        except OSError:
            continue  # a model folder on a disk not mounted now: the load will say so
        if device in seen:
            continue
        seen.add(device)
        views.append(
            DiskView(str(path), stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize)
        )
    return views
