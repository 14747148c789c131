"""What a job is handed and what it hands back.

A job is ``async def run(ctx: JobContext, job: <its config>) -> JobOutcome``. It may use
what :class:`JobContext` offers and nothing else of the daemon, so a job can be tested
with a small context of real parts. Blocking work (tar, disk walks) goes to a thread;
commands run as subprocesses: no job may stall the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from helixd.errors import JobError

if TYPE_CHECKING:
    from helixd.config import DaemonPaths, LoadedConfig
    from helixd.jobs.alerts import AlertBook
    from helixd.scheduler.residency import Residency
    from helixd.supervisor.arbiter import Supervisor


@dataclass
class JobOutcome:
    """The result of one run: ``ok``, one line for humans, and details for ``--json``."""

    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class JobFailed(JobError):
    """A job could not do its work; the message says what and what to do."""

    code = "job_failed"


class JobContext(Protocol):
    """The parts of the daemon a job may use."""

    paths: DaemonPaths
    supervisor: Supervisor
    residency: Residency
    alerts: AlertBook

    @property
    def loaded(self) -> LoadedConfig:
        """The running config (it changes on reload)."""
        ...

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file and apply it (raises ``ReloadRefused`` when invalid)."""
        ...

    def set_pin(self, name: str, pinned: bool) -> None:
        """Pin or unpin a model at run time, persisted as ``helixctl pin`` does."""
        ...
