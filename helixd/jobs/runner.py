"""Runs the configured jobs: APScheduler triggers them, this module runs and records them.

APScheduler 3's :class:`AsyncIOScheduler` fires on the daemon's own event loop. Its
``coalesce`` and ``max_instances = 1`` keep a late or slow job from piling up; on top,
each job has one run in progress at most, whoever asked for it: a manual run
(``helixctl run NAME``) that finds one going waits for it and returns its result rather
than starting a second. Every run is bounded by the job's ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from helixd.config.jobs import JobConfig
from helixd.errors import JobError
from helixd.jobs.base import JobContext, JobFailed, JobOutcome
from helixd.jobs.history import JobHistory, JobRun, Trigger, iso

log = logging.getLogger("helixd.jobs")

JobFunction = Callable[[JobContext, Any], Awaitable[JobOutcome]]
# Kinds whose failures raise a job_failed alert here; health and update alert on their own,
# except when the run itself broke (timed out, crashed): then nobody else would.
ALERT_ON_FAILURE = ("backup", "cleanup", "rotation")


class UnknownJob(JobError, KeyError):
    """No job of that name; the message lists the known ones."""

    code = "unknown_job"


class JobRunner:
    """The jobs of the running config, their schedule, and their runs."""

    def __init__(
        self,
        ctx: JobContext,
        history: JobHistory,
        functions: Mapping[str, JobFunction],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx
        self.history = history
        self.functions = dict(functions)
        self.jobs: dict[str, JobConfig] = {}
        self._clock = clock
        self._running: dict[str, asyncio.Task[JobRun]] = {}
        self._scheduler: AsyncIOScheduler | None = None
        # APScheduler logs every run at INFO ("Running job …"): noise every 15 s.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)

    # -- schedule ----------------------------------------------------------------------

    def start(self, jobs: Mapping[str, JobConfig]) -> None:
        """Start the scheduler on the running loop with ``jobs``."""
        self._scheduler = AsyncIOScheduler(
            event_loop=asyncio.get_running_loop(),
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._scheduler.start()
        self.configure(jobs)

    def configure(self, jobs: Mapping[str, JobConfig]) -> None:
        """Apply a (re)loaded config: add, change and remove scheduled jobs."""
        old, self.jobs = self.jobs, dict(jobs)
        if self._scheduler is None:
            return
        for name in old.keys() - self.jobs.keys():
            self._unschedule(name)
        for name, job in self.jobs.items():
            if old.get(name) == job:
                continue
            self._unschedule(name)
            if job.enabled:
                self._scheduler.add_job(
                    self._scheduled, _trigger(job), args=[name], id=name, name=name
                )

    def _unschedule(self, name: str) -> None:
        assert self._scheduler is not None
        if self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)

    async def stop(self) -> None:
        """Stop scheduling and cancel runs in progress (recorded as interrupted)."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if tasks:
            self.history.save()  # the interrupted runs

    async def _scheduled(self, name: str) -> None:
        if name in self._running:
            return  # a manual run is going: this one is coalesced into it
        await self.run(name, "schedule")

    # -- runs --------------------------------------------------------------------------

    def job(self, name: str) -> JobConfig:
        """The job called ``name``, or :class:`UnknownJob`."""
        job = self.jobs.get(name)
        if job is None:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise UnknownJob(f"no job named {name!r}; jobs: {known}")
        return job

    async def run(self, name: str, trigger: Trigger = "manual") -> JobRun:
        """Run ``name`` now and return the finished run (joins one in progress)."""
        job = self.job(name)
        task = self._running.get(name)
        if task is None:
            task = asyncio.create_task(self._run(name, job, trigger), name=f"job {name}")
            self._running[name] = task
            task.add_done_callback(lambda _: self._running.pop(name, None))
        # A client that gives up waiting must not cancel the run for everyone.
        return await asyncio.shield(task)

    async def _run(self, name: str, job: JobConfig, trigger: Trigger) -> JobRun:
        run = JobRun(job=name, kind=job.kind, trigger=trigger, started=self._clock())
        began = time.monotonic()
        broke = True  # the run did not end with its own verdict
        log.debug("job %s (%s) started (%s)", name, job.kind, trigger)
        try:
            async with asyncio.timeout(job.timeout_s):
                outcome = await self.functions[job.kind](self.ctx, job)
            broke = False
        except TimeoutError:
            outcome = JobOutcome(False, f"timed out after {job.timeout_s:g} s (timeout_s)")
        except JobFailed as exc:
            outcome, broke = JobOutcome(False, str(exc)), False
        except asyncio.CancelledError:
            outcome = JobOutcome(False, "interrupted: helixd stopped during the run")
            self._finish(run, outcome, began, broke=False)  # a stop is nobody's failure
            raise
        except Exception as exc:
            log.exception("job %s failed", name)
            outcome = JobOutcome(False, f"internal error: {exc!r}; see helixd's log")
        self._finish(run, outcome, began, broke)
        await asyncio.to_thread(self.history.save)
        return run

    def _finish(self, run: JobRun, outcome: JobOutcome, began: float, broke: bool) -> None:
        run.duration_s = round(time.monotonic() - began, 3)
        run.result = "ok" if outcome.ok else "failed"
        run.message = outcome.message
        run.details = outcome.details
        self.history.add(run)
        level = logging.INFO if outcome.ok else logging.WARNING
        if run.kind == "alerts" and outcome.ok:
            level = logging.DEBUG  # every 15 s; the alerts themselves are logged
        log.log(level, "job %s %s in %.1f s: %s", run.job, run.result, run.duration_s, run.message)
        key = f"job_failed:{run.job}"
        if outcome.ok:
            self.ctx.alerts.resolve(key, f"the {run.job} job ran fine again")
        elif broke or run.kind in ALERT_ON_FAILURE:
            self.ctx.alerts.fire(
                key,
                "error" if broke else "warning",
                f"job {run.job} failed: {outcome.message}",
                source="jobs",
            )

    # -- views -------------------------------------------------------------------------

    def info(self) -> list[dict[str, Any]]:
        """Every job with its schedule, next run and last run, for ``GET /v1/jobs``."""
        return [self._job_info(name, job) for name, job in sorted(self.jobs.items())]

    def _job_info(self, name: str, job: JobConfig) -> dict[str, Any]:
        scheduled = self._scheduler.get_job(name) if self._scheduler is not None else None
        next_run = scheduled.next_run_time.timestamp() if scheduled is not None else None
        last = self.history.last(name)
        return {
            "name": name,
            "kind": job.kind,
            "schedule": job.schedule,
            "enabled": job.enabled,
            "running": name in self._running,
            "next_run": next_run,
            "next_run_at": iso(next_run),
            "last_run": last.as_json() if last is not None else None,
        }

    def summary(self) -> dict[str, Any]:
        """For status: how many jobs, which are running, which last failed."""
        failed = []
        for name in sorted(self.jobs):
            last = self.history.last(name)
            if last is not None and last.result == "failed":
                failed.append(name)
        return {"count": len(self.jobs), "running": sorted(self._running), "failed": failed}


def _trigger(job: JobConfig) -> BaseTrigger:
    if job.cron is not None:
        return CronTrigger.from_crontab(job.cron)
    assert job.interval is not None
    return IntervalTrigger(seconds=job.interval)
