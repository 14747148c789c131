"""What a job is handed and what it hands back.

A job is ``async def run(ctx: JobContext, job: <its config>) -> JobOutcome``. It may use
what :class:`JobContext` offers and nothing else of the daemon, so a job can be tested
with a small context of real parts. Blocking work (tar, disk walks) goes to a thread;
commands run as subprocesses: no job may stall the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from helixd.errors import JobError

if TYPE_CHECKING:
    from helixd.config import DaemonPaths, LoadedConfig
    from helixd.jobs.alerts import AlertBook
    from helixd.scheduler import ModelStatus
    from helixd.supervisor.process import ManagedProcess


@dataclass
class JobOutcome:
    """The result of one run: ``ok``, one line for humans, and details for ``--json``."""

    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class JobFailed(JobError):
    """A job could not do its work; the message says what and what to do."""

    code = "job_failed"


class JobModels(Protocol):
    """What jobs may do with models (:class:`helixd.scheduler.Residency` is one): read
    frozen views, and load, unload or restart one as an operator would."""

    def find(self, name: str) -> ModelStatus | None: ...

    def view(self, name: str) -> ModelStatus: ...

    def views(self) -> list[ModelStatus]: ...

    async def load(self, name: str, timeout: float | None = None) -> ModelStatus: ...

    async def unload(self, name: str) -> ModelStatus: ...

    async def recycle(self, name: str, why: str, timeout: float | None = None) -> ModelStatus: ...


class JobProcesses(Protocol):
    """What jobs may do with providers' processes (:class:`helixd.supervisor.arbiter.
    Supervisor` is one): read them, and restart one under the lock reloads take."""

    @property
    def processes(self) -> Mapping[str, ManagedProcess]: ...

    @property
    def lock(self) -> asyncio.Lock: ...

    def get(self, name: str) -> ManagedProcess: ...


class JobContext(Protocol):
    """The parts of the daemon a job may use."""

    paths: DaemonPaths
    alerts: AlertBook

    @property
    def supervisor(self) -> JobProcesses:
        """The providers' processes."""
        ...

    @property
    def residency(self) -> JobModels:
        """The models."""
        ...

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
