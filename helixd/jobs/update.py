"""The update job: update providers with their own commands; roll back what breaks.

For each provider with a ``[providers.NAME.update]`` table, one at a time: read the
installed version, run the update command, read the version again; when it changed (or
cannot be told), restart the provider — its server process, or each loaded model's
process for a process-per-model provider — and check it becomes ready within
``verify_s``. A failed step runs the rollback command, restarts and checks again, and
raises the ``update_failed:NAME`` alert. Then Ollama models marked ``refresh = true`` are
re-pulled and their digests compared. Commands run without a shell, with the provider's
environment and working directory, in their own process group: what a command leaves
running in it is stopped when it exits, and the whole group is killed on a timeout or
when the job is cancelled (the job runner's ``timeout_s``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from helixd.config import ProviderConfig
from helixd.config.jobs import Severity, UpdateJob
from helixd.jobs.base import JobContext, JobOutcome
from helixd.jobs.commands import CommandResult, command_env, run_command
from helixd.jobs.refresh import refresh_models
from helixd.scheduler import ModelState
from helixd.supervisor.process import ProcessState

log = logging.getLogger("helixd.jobs.update")

VERSION_TIMEOUT_S = 60.0
ALERT_SOURCE = "update"


@dataclass
class ProviderResult:
    """One provider's update, as ``details["providers"][name]`` shows it."""

    before: str | None = None
    after: str | None = None
    result: str = "failed"  # updated | up_to_date | rolled_back | failed
    message: str = ""
    output_tail: list[str] = field(default_factory=list)
    rollback_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Updated, or nothing to update."""
        return self.result in ("updated", "up_to_date")

    def as_json(self) -> dict[str, Any]:
        """The details entry."""
        data = dataclasses.asdict(self)
        data["rollback_output_tail"] = data.pop("rollback_tail")
        return data


class ProviderUpdate:
    """One provider's update: its commands, its restart and its result."""

    def __init__(
        self, ctx: JobContext, job: UpdateJob, name: str, provider: ProviderConfig
    ) -> None:
        assert provider.update is not None
        self.ctx, self.job, self.name, self.commands = ctx, job, name, provider.update
        self.env, self.cwd = command_env(ctx, name, provider)
        self.res = ProviderResult()
        self.key = f"update_failed:{name}"
        process = ctx.supervisor.processes.get(name)
        self.supervised = process is not None
        # An operator's stop stands: a stopped server is updated, not started.
        self.running = process is not None and process.state != ProcessState.STOPPED
        # Process per model: the models whose processes run the old code now.
        self.models = [
            m.name for m in ctx.residency.views() if m.config.provider == name and m.loaded
        ]

    async def run(self) -> ProviderResult:
        """Update, check, roll back what failed; record it. Never raises for the provider."""
        before, why = await self._version()
        if before is None:
            return self._alert("error", f"{why}; nothing was changed")
        self.res.before = before or None
        log.info("%s: updating from %s", self.name, before or "an unknown version")
        update = await self._run(self.commands.command)
        self.res.output_tail = update.tail
        if not update.started:  # nothing ran, nothing changed: no rollback, no restart
            return self._alert(
                "error", f"the update could not start: {update.describe()}; nothing was changed"
            )
        if not update.ok:
            return await self._roll_back(update.describe())
        after, why = await self._version()
        if after is None:
            return await self._roll_back(f"after the update, {why}")
        self.res.after = after or None
        if after and after == before:
            return self._succeeded("up_to_date", f"already up to date ({after})")
        new = after or "the new version"
        ready, how = await self._restart(self.job.verify_s, f"updated to {new}")
        if not ready:
            return await self._roll_back(f"{new} {how}")
        return self._succeeded("updated", f"{before or '?'} → {after or '?'}: {how}")

    async def _run(self, argv: Sequence[str]) -> CommandResult:
        return await run_command(argv, self.env, self.cwd, self.commands.timeout_s)

    async def _version(self) -> tuple[str | None, str]:
        """``(version, "")``, or ``(None, why not)``; ``("", "")`` without a version command."""
        if self.commands.version is None:
            return "", ""
        timeout = min(VERSION_TIMEOUT_S, self.commands.timeout_s)
        result = await run_command(self.commands.version, self.env, self.cwd, timeout)
        if not result.ok:
            said = "".join(f": {line}" for line in result.tail[-1:])
            return None, f"version command {result.describe()}{said}"
        if not result.first_stdout:
            return None, "version command printed nothing"
        return result.first_stdout, ""

    async def _roll_back(self, failure: str) -> ProviderResult:
        """Put the old version back (a half-done update may have changed things); alert."""
        log.error("%s: update failed: %s", self.name, failure)
        failed = f"update failed ({failure})"
        if self.commands.rollback is None:
            # Restarting now could only start what the failed update left: leave it be.
            state = self._state()
            return self._alert("critical", f"{failed}; no rollback command: needs a hand ({state})")
        rollback = await self._run(self.commands.rollback)
        self.res.rollback_tail = rollback.tail
        if not rollback.ok:
            state = self._state()
            how = rollback.describe()
            return self._alert("critical", f"{failed}; rollback {how}: needs a hand ({state})")
        ready, how = await self._restart(self.job.verify_s, "rolled back")
        now, _ = await self._version()
        self.res.after = now or None
        back_to = now or self.res.before or "the previous version"
        if not ready:
            return self._alert("critical", f"{failed}; rolled back to {back_to} but it {how}")
        self.res.result = "rolled_back"
        return self._alert("error", f"{failed}, rolled back to {back_to}")

    async def _restart(self, verify_s: float, why: str) -> tuple[bool, str]:
        """``(ready, how it went)``; never raises for the provider's failure."""
        try:
            if self.supervised:
                return await self._restart_server(verify_s)
            return await self._recycle_models(verify_s, why)
        except Exception as exc:  # a reload replaced it, a load error, …: it failed
            return False, f"restart failed: {exc}"

    async def _restart_server(self, verify_s: float) -> tuple[bool, str]:
        if not self.running:
            return True, "not running: left stopped"
        async with self.ctx.supervisor.lock:
            process = self.ctx.supervisor.get(self.name)  # a reload may have replaced it
            await process.restart()
        state = await process.wait_settled(verify_s)
        if state == ProcessState.READY:
            return True, "restarted, ready"
        return False, f"is {state} after the restart ({process.message or 'no message'})"

    async def _recycle_models(self, verify_s: float, why: str) -> tuple[bool, str]:
        if not self.models:
            return True, "no model loaded: nothing to restart or verify"
        problems = []
        for model in self.models:
            try:
                async with asyncio.timeout(verify_s):
                    now = await self.ctx.residency.recycle(model, why, timeout=verify_s)
            except TimeoutError:
                problems.append(f"did not reload {model} within {verify_s:g} s")
                continue
            except Exception as exc:  # the load's own error says why
                problems.append(f"did not reload {model} ({exc})")
                continue
            if now.state != ModelState.LOADED:
                problems.append(f"left {model} {now.state} ({now.message})")
        if problems:
            return False, "; ".join(problems)
        return True, f"reloaded {', '.join(self.models)}"

    def _state(self) -> str:
        """Where it stands now, for a message that asks for a hand."""
        process = self.ctx.supervisor.processes.get(self.name)
        if process is not None:
            return f"{self.name} is {process.state}"
        found = {m: self.ctx.residency.find(m) for m in self.models}
        states = {
            m: "no longer configured" if v is None else str(v.state) for m, v in found.items()
        }
        return ", ".join(f"{m} is {s}" for m, s in states.items()) or "no model loaded"

    def _succeeded(self, result: str, message: str) -> ProviderResult:
        self.res.result, self.res.message = result, message
        self.ctx.alerts.resolve(self.key, message)
        return self.res

    def _alert(self, severity: Severity, message: str) -> ProviderResult:
        self.res.message = message
        self.ctx.alerts.fire(self.key, severity, f"{self.name}: {message}", source=ALERT_SOURCE)
        return self.res


# -- the job ---------------------------------------------------------------------------------


def _provider_line(name: str, res: ProviderResult) -> str:
    if res.result == "updated" and res.before and res.after:
        return f"{name} {res.before} → {res.after}"
    if res.result == "updated":
        return f"{name} updated"
    if res.result == "up_to_date":
        return f"{name} up to date ({res.after})"
    return f"{name}: {res.message}"


def _model_line(name: str, refresh: dict[str, Any]) -> str:
    if "error" in refresh:
        return f"{name}: {refresh['error']}"
    if refresh.get("changed"):
        return f"{name}: new version"
    return f"{name}: {refresh['message']}"


async def run_update(ctx: JobContext, job: UpdateJob) -> JobOutcome:
    """The update job: each provider in turn, then the Ollama model refresh."""
    config = ctx.loaded.config  # one config for the whole run, whatever a reload does
    names = job.providers or [n for n, p in config.providers.items() if p.update is not None]
    providers: dict[str, ProviderResult] = {}
    for name in names:
        provider = config.providers.get(name)
        if provider is None or provider.update is None:
            providers[name] = ProviderResult(message="no update commands in the config")
            continue
        try:
            providers[name] = await ProviderUpdate(ctx, job, name, provider).run()
        except Exception as exc:  # one provider's bug must not stop the others' updates
            log.exception("%s: update failed", name)
            providers[name] = ProviderResult(message=f"internal error in helixd: {exc!r}")
    models = await refresh_models(ctx, config) if job.refresh_models else {}
    lines = [_provider_line(n, r) for n, r in providers.items()]
    lines += [_model_line(n, m) for n, m in models.items()]
    ok = all(r.ok for r in providers.values()) and not any("error" in m for m in models.values())
    return JobOutcome(
        ok=ok,
        message="; ".join(lines) or "nothing to update: no provider has update commands",
        details={
            "providers": {n: r.as_json() for n, r in providers.items()},
            "models": models,
        },
    )
