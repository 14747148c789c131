"""What the page may do: load, unload, pin, unpin a model, restart a provider, run a job.

Each action is the control command of the same name, done through the same daemon calls,
so the page can do nothing ``helixctl`` cannot, and is refused the same way (with the
error tree's codes). Only configured names are accepted, never commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from helixd.errors import ShuttingDown
from helixd.jobs.runner import JobRunner
from helixd.scheduler import Residency
from helixd.supervisor.arbiter import Supervisor
from helixd.supervisor.process import ManagedProcess

MODEL_ACTIONS = ("load", "unload", "pin", "unpin")
ACTIONS = (*MODEL_ACTIONS, "restart", "run")


class ActionBackend(Protocol):
    """What the page's actions need from the daemon (what the control API uses too)."""

    residency: Residency
    supervisor: Supervisor
    jobs: JobRunner
    stopping: bool

    def set_pin(self, name: str, pinned: bool) -> None:
        """Pin or unpin ``name`` at run time and persist it."""
        ...

    def provider_process(self, name: str) -> ManagedProcess:
        """Provider ``name``'s own process; :class:`UnknownProcess` says why there is none."""
        ...

    def operator_stopped(self, name: str, stopped: bool) -> None:
        """Remember that an operator stopped (True) or started (False) ``name``."""
        ...


@dataclass(frozen=True)
class Done:
    """An action's outcome: ``ok`` False for a job that ran and failed."""

    ok: bool
    message: str


async def act(backend: ActionBackend, action: str, target: str) -> Done:
    """Do ``action`` on ``target``; raise a :class:`~helixd.errors.HelixError` if refused."""
    if backend.stopping:
        raise ShuttingDown("helixd is shutting down")
    residency = backend.residency
    if action in MODEL_ACTIONS:
        residency.view(target)  # an unknown model is refused before anything is done
        timeout = residency.scheduler.load_timeout_s
        if action == "load":
            model = await residency.load(target, timeout)
            return Done(True, f"{target} is {model.state} on {model.device or '-'}")
        if action == "unload":
            model = await residency.unload(target)
            return Done(True, f"{target} is {model.state}")
        backend.set_pin(target, action == "pin")
        if action == "unpin":
            return Done(True, f"{target} is unpinned: it may be evicted when idle")
        model = await residency.load(target, timeout)
        return Done(True, f"{target} is pinned and {model.state}")
    if action == "restart":
        process = backend.provider_process(target)
        async with backend.supervisor.lock:
            await process.restart()
            backend.operator_stopped(target, False)
        return Done(True, f"{target} is restarting")
    if action == "run":
        run = await backend.jobs.run(target, "manual")
        return Done(run.result == "ok", f"{target}: {run.result}: {run.message}".rstrip(": "))
    raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
