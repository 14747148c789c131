"""The control API's operations routes: ``/v1/jobs``, ``/v1/backups`` and ``/v1/alerts``."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from helixd.control.api import ControlAPI
from helixd.control.routes import add_commands, error
from helixd.jobs.alerts import AlertBook
from helixd.jobs.backup import BackupError, UnknownBackup
from helixd.jobs.backup_ops import BackupOps, RestoreFailed
from helixd.jobs.runner import JobRunner, UnknownJob


class JobsBackend(Protocol):
    """What the operations routes need from the daemon."""

    jobs: JobRunner
    alerts: AlertBook
    backups: BackupOps
    stopping: bool


def add_jobs_routes(api: ControlAPI, app: web.Application, backend: JobsBackend) -> None:
    """Register the jobs, backups and alerts routes on ``app``."""
    add_commands(app, ("jobs", "backups", "alerts"), _JobsRoutes(api, backend))


class _JobsRoutes:
    def __init__(self, api: ControlAPI, backend: JobsBackend) -> None:
        self.api = api
        self.backend = backend

    def _refuse_when_stopping(self) -> web.Response | None:
        if self.backend.stopping:
            return error(503, "stopping", "helixd is shutting down")
        return None

    async def list_jobs(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.ListJobs`: each job's schedule, next run and last run."""
        return web.json_response({"jobs": self.backend.jobs.info()})

    async def run_job(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.RunJob`: run it now and answer with the finished run.

        200 whatever the run's result (the request did what it asked); the run's
        ``result`` says ``ok`` or ``failed``.
        """
        name = request.match_info["name"]
        refused = self._refuse_when_stopping()
        if refused is not None:
            return refused
        try:
            self.backend.jobs.job(name)
        except UnknownJob as exc:
            return error(404, "unknown_job", exc.args[0])
        self.api._audit(request, f"run job {name}")
        run = await self.backend.jobs.run(name, "manual")
        return web.json_response({"run": run.as_json()})

    async def list_backups(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.ListBackups`: the backups on disk, newest first."""
        try:
            return web.json_response(await self.backend.backups.listing())
        except BackupError as exc:
            return error(500, "backup_failed", str(exc))

    async def create_backup(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.CreateBackup`: take one now (the backup job keeps retention)."""
        refused = self._refuse_when_stopping()
        if refused is not None:
            return refused
        self.api._audit(request, "create backup")
        try:
            info = await self.backend.backups.create(label="manual")
        except BackupError as exc:
            return error(500, "backup_failed", str(exc))
        return web.json_response({"backup": info.as_json()})

    async def restore_backup(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.RestoreBackup`: check it, keep a safety copy, swap, reload."""
        backup_id = request.match_info["id"]
        refused = self._refuse_when_stopping()
        if refused is not None:
            return refused
        self.api._audit(request, f"restore backup {backup_id}")
        try:
            result: dict[str, Any] = await self.backend.backups.restore(backup_id)
        except UnknownBackup as exc:
            return error(404, "unknown_backup", str(exc))
        except BackupError as exc:
            return error(422, "refused", str(exc))
        except RestoreFailed as exc:
            return error(500, "restore_failed", str(exc))
        return web.json_response(result)

    async def list_alerts(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.ListAlerts`: active alerts (and recently resolved ones)."""
        include = request.query.get("all", "0") not in ("0", "", "false")
        return web.json_response(self.backend.alerts.info(include_resolved=include))
