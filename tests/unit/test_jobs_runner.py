"""The job runner: APScheduler triggers, one run at a time, timeouts, history, job alerts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from helixd.config import ConfigError, validate_config
from helixd.config.jobs import JobConfig, default_job
from helixd.jobs.alerts import AlertBook
from helixd.jobs.base import JobContext, JobFailed, JobOutcome
from helixd.jobs.history import JobHistory
from helixd.jobs.runner import JobRunner, UnknownJob
from tests.conftest import wait_for


def jobs_of(toml_tables: dict[str, Any]) -> dict[str, JobConfig]:
    return dict(validate_config({"jobs": toml_tables}, "t.toml").jobs)


class Ctx:
    """The runner touches only ``alerts`` of its context; the jobs here use nothing."""

    def __init__(self) -> None:
        self.alerts = AlertBook(None)


class Scripted:
    """A job function the test steers: each call waits for ``gate``, then does ``then``."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.then: Any = JobOutcome(True, "done")

    async def __call__(self, ctx: JobContext, job: Any) -> JobOutcome:
        self.calls += 1
        self.started.set()
        await self.gate.wait()
        if isinstance(self.then, BaseException):
            raise self.then
        if callable(self.then):
            return await self.then()  # type: ignore[no-any-return]
        return self.then  # type: ignore[no-any-return]


def make_runner(tmp_path: Path, fn: Scripted, kind: str = "backup") -> tuple[JobRunner, Ctx]:
    ctx = Ctx()
    runner = JobRunner(ctx, JobHistory(tmp_path / "jobs.json"), {kind: fn})  # type: ignore[arg-type]
    return runner, ctx


async def test_a_manual_run_is_recorded_with_its_result(tmp_path: Path) -> None:
    fn = Scripted()
    runner, _ = make_runner(tmp_path, fn)
    runner.configure(jobs_of({"nightly": {"kind": "backup", "cron": "0 3 * * *"}}))
    run = await runner.run("nightly")
    assert (run.result, run.message, run.trigger, run.kind) == ("ok", "done", "manual", "backup")
    assert run.duration_s is not None and run.duration_s >= 0
    # Persisted: a new runner (helixd restarted) reads the same history.
    again = JobHistory(tmp_path / "jobs.json").last("nightly")
    assert again is not None and again.message == "done" and again.result == "ok"


async def test_failures_timeouts_and_crashes_are_failed_runs_with_the_reason(
    tmp_path: Path,
) -> None:
    fn = Scripted()
    runner, _ = make_runner(tmp_path, fn)
    runner.configure(jobs_of({"b": {"kind": "backup", "interval": "1h", "timeout_s": 0.2}}))
    fn.then = JobFailed("disk full writing /var/lib/helixd/backups")
    assert (await runner.run("b")).message == "disk full writing /var/lib/helixd/backups"
    fn.then = RuntimeError("boom")
    run = await runner.run("b")
    assert run.result == "failed" and "internal error: RuntimeError('boom')" in run.message
    fn.gate.clear()  # never released: the job's timeout_s ends it
    fn.then = JobOutcome(True, "never")
    run = await runner.run("b")
    assert (run.result, run.message) == ("failed", "timed out after 0.2 s (timeout_s)")


async def test_a_second_request_joins_the_run_in_progress(tmp_path: Path) -> None:
    fn = Scripted()
    fn.gate.clear()
    runner, _ = make_runner(tmp_path, fn)
    runner.configure(jobs_of({"b": {"kind": "backup", "interval": "1h"}}))
    first = asyncio.create_task(runner.run("b"))
    await fn.started.wait()
    second = asyncio.create_task(runner.run("b"))
    await runner._scheduled("b")  # the schedule firing meanwhile is coalesced into it
    assert runner.info()[0]["running"] is True
    fn.gate.set()
    assert await first is await second
    assert fn.calls == 1
    assert len(runner.history.runs["b"]) == 1


async def test_a_client_that_gives_up_does_not_cancel_the_run(tmp_path: Path) -> None:
    fn = Scripted()
    fn.gate.clear()
    runner, _ = make_runner(tmp_path, fn)
    runner.configure(jobs_of({"b": {"kind": "backup", "interval": "1h"}}))
    waiter = asyncio.create_task(runner.run("b"))
    await fn.started.wait()
    waiter.cancel()
    fn.gate.set()
    await wait_for(lambda: runner.history.last("b") is not None, what="the run to end")
    last = runner.history.last("b")
    assert last is not None and last.result == "ok"


async def test_unknown_job_names_the_known_ones(tmp_path: Path) -> None:
    runner, _ = make_runner(tmp_path, Scripted())
    runner.configure(jobs_of({"b": {"kind": "backup", "interval": "1h"}}))
    with pytest.raises(UnknownJob, match=r"no job named 'nope'; jobs: b"):
        await runner.run("nope")


async def test_the_scheduler_fires_enabled_jobs_and_skips_disabled_ones(tmp_path: Path) -> None:
    fn = Scripted()
    runner, _ = make_runner(tmp_path, fn)
    runner.start(
        jobs_of(
            {
                "fast": {"kind": "backup", "interval": 0.05},
                "off": {"kind": "backup", "interval": 0.05, "enabled": False},
            }
        )
    )
    try:
        await wait_for(lambda: len(runner.history.runs.get("fast", [])) >= 2, what="2 runs")
        info = {j["name"]: j for j in runner.info()}
        assert info["fast"]["next_run"] is not None and info["fast"]["schedule"] == "every 0.05s"
        assert info["off"]["next_run"] is None and "off" not in runner.history.runs
        assert all(r.trigger == "schedule" for r in runner.history.runs["fast"])
        # A reload that removes the job stops its schedule.
        runner.configure(jobs_of({"off": {"kind": "backup", "interval": 0.05, "enabled": False}}))
        assert runner._scheduler is not None and runner._scheduler.get_job("fast") is None
    finally:
        await runner.stop()


async def test_cron_jobs_get_their_next_run_from_the_expression(tmp_path: Path) -> None:
    runner, _ = make_runner(tmp_path, Scripted())
    runner.start(jobs_of({"nightly": {"kind": "backup", "cron": "0 3 * * *"}}))
    try:
        job = runner.info()[0]
        assert job["schedule"] == "cron 0 3 * * *"
        assert job["next_run_at"].endswith("Z") and job["last_run"] is None
    finally:
        await runner.stop()


async def test_a_failing_backup_raises_an_alert_that_resolves_when_it_works(
    tmp_path: Path,
) -> None:
    fn = Scripted()
    runner, ctx = make_runner(tmp_path, fn)
    runner.configure(jobs_of({"b": {"kind": "backup", "interval": "1h"}}))
    fn.then = JobFailed("no space left")
    await runner.run("b")
    (alert,) = ctx.alerts.active()
    assert (alert.key, alert.severity) == ("job_failed:b", "warning")
    assert "no space left" in alert.message
    fn.then = JobOutcome(True, "ok")
    await runner.run("b")
    assert ctx.alerts.active() == []


async def test_a_job_that_alerts_on_its_own_still_alerts_when_its_run_times_out(
    tmp_path: Path,
) -> None:
    fn = Scripted()
    runner, ctx = make_runner(tmp_path, fn, kind="update")
    runner.configure(jobs_of({"update": {"kind": "update", "interval": "1h", "timeout_s": 0.1}}))
    fn.then = JobOutcome(False, "rolled back")  # its own verdict: it raised its own alert
    await runner.run("update")
    assert ctx.alerts.active() == []
    fn.gate.clear()  # now it never ends: the runner's timeout cuts it off
    await runner.run("update")
    (alert,) = ctx.alerts.active()
    assert (alert.key, alert.severity) == ("job_failed:update", "error")
    assert "timed out after 0.1 s" in alert.message


async def test_a_run_interrupted_by_a_stop_is_recorded_as_interrupted(tmp_path: Path) -> None:
    fn = Scripted()
    fn.gate.clear()
    runner, _ = make_runner(tmp_path, fn)
    runner.start(jobs_of({"b": {"kind": "backup", "interval": "1h"}}))
    task = asyncio.create_task(runner.run("b"))
    await fn.started.wait()
    await runner.stop()
    with pytest.raises(asyncio.CancelledError):
        await task
    last = JobHistory(tmp_path / "jobs.json").last("b")
    assert last is not None and last.result == "failed" and "interrupted" in last.message


def test_history_keeps_the_last_runs_and_survives_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text('{"b": [{"job": "b"}, "junk", {"job": "b", "kind": "backup", "started": 1}]}')
    history = JobHistory(path)
    last = history.last("b")
    assert last is not None and last.started == 1 and len(history.runs["b"]) == 1
    path.write_text("{not json")
    assert JobHistory(path).runs == {}


# -- config --------------------------------------------------------------------------


def test_default_jobs_exist_unless_the_config_has_one_of_their_kind() -> None:
    config = validate_config(
        {"jobs": {"nightly": {"kind": "backup", "cron": "0 2 * * *", "keep_daily": 3}}}, "t"
    )
    jobs = config.all_jobs
    assert sorted(jobs) == ["alerts", "cleanup", "health", "nightly", "update"]
    assert jobs["update"].enabled is False and jobs["health"].interval == 30
    assert default_job("backup").cron == "0 3 * * *"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "backup"}, "jobs.x: needs a schedule: interval = '30s' or cron = '0 3 * * *'"),
        (
            {"kind": "backup", "cron": "0 3 * *"},
            "jobs.x.cron: expected a five-field cron expression",
        ),
        (
            {"kind": "backup", "interval": "1h", "keep": 3},
            "jobs.x.keep: unknown key; allowed keys here: cron, enabled, interval, keep_daily, "
            "keep_weekly, kind, paths, timeout_s",
        ),
        ({"interval": "1h"}, "jobs.x.kind: required key is missing; one of health, update"),
        ({"kind": "bkp", "interval": "1h"}, "jobs.x.kind: expected one of health, update, backup"),
        (
            {"kind": "rotation", "cron": "0 8 * * *", "load": ["ghost"]},
            "jobs.x.load: no model named 'ghost'; models: m",
        ),
        (
            {"kind": "rotation", "cron": "0 8 * * *", "load": ["m"], "unload": ["m"]},
            "jobs.x: m in both load and unload",
        ),
        (
            {"kind": "update", "interval": "1h", "providers": ["p"]},
            "jobs.x.providers: providers.p has no update commands; add [providers.p.update]",
        ),
        (
            {"kind": "alerts", "interval": "15s", "webhooks": [{"url": "ftp://x"}]},
            "jobs.x.webhooks.0.url: expected an http:// or https:// URL; got 'ftp://x'",
        ),
        (
            {"kind": "backup", "interval": "1h", "keep_daily": 0, "keep_weekly": 0},
            "keep_daily and keep_weekly are both 0",
        ),
    ],
)
def test_job_config_errors_name_the_key_and_the_fix(table: dict[str, Any], message: str) -> None:
    data = {
        "providers": {"p": {"kind": "openai", "command": ["srv", "{model_path}", "{port}"]}},
        "models": {"m": {"provider": "p", "path": "/m.gguf"}},
        "jobs": {"x": table},
    }
    with pytest.raises(ConfigError) as caught:
        validate_config(data, "t.toml")
    assert message in str(caught.value)


def test_refresh_is_for_ollama_models_only() -> None:
    data = {
        "providers": {"p": {"kind": "openai", "command": ["srv", "{model_path}", "{port}"]}},
        "models": {"m": {"provider": "p", "path": "/m.gguf", "refresh": True}},
    }
    with pytest.raises(
        ConfigError, match=r"models\.m\.refresh: only Ollama models can be re-pulled"
    ):
        validate_config(data, "t.toml")


def test_a_load_out_of_gpu_memory_alerts_until_the_model_loads() -> None:
    from helixd.jobs.service import Operations

    book = AlertBook(None)
    ops = Operations.__new__(Operations)  # only the hook: no daemon needed
    ops.alerts = book
    ops.load_outcome("x", "CUDA out of memory", True)
    ops.load_outcome("y", "no such file", False)  # not a memory problem: no alert
    (alert,) = book.active()
    assert (alert.key, alert.severity, alert.source) == ("gpu_oom:x", "error", "residency")
    assert "CUDA out of memory" in alert.message
    ops.load_outcome("x", None, False)
    assert book.active() == []
