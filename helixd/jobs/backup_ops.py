"""Backups as the daemon runs them: the backup job, on-demand backups, and restore.

The archive work itself (format, retention, the hostile-archive gate) is
:mod:`helixd.jobs.backup`, blocking code run here in a thread. This module decides what
goes in (the running config, the state dir, the backup job's ``paths``), keeps one
backup or restore going at a time, and carries a restore through: check the archive,
keep a safety backup of what is there now, swap the files in, re-read the state and
reload the config.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helixd.config.jobs import BackupJob
from helixd.control.api import ReloadRefused
from helixd.jobs import backup
from helixd.jobs.base import JobContext, JobOutcome

log = logging.getLogger("helixd.jobs.backup")


class RestoreFailed(Exception):
    """The files were restored but the daemon could not take them up; says what to do."""


class BackupOps:
    """Backups of one daemon, one at a time."""

    def __init__(self, ctx: JobContext, on_state_restored: Callable[[], None]) -> None:
        self.ctx = ctx
        self.on_state_restored = on_state_restored
        self._lock = asyncio.Lock()

    @property
    def folder(self) -> Path:
        """Where backups are kept: the state dir's ``backups``."""
        return backup.backup_dir(self.ctx.paths.state_dir)

    def backup_job(self) -> BackupJob | None:
        """The config's backup job (its retention and paths), if it has one."""
        jobs = self.ctx.loaded.config.all_jobs.values()
        return next((j for j in jobs if isinstance(j, BackupJob)), None)

    def extra_paths(self, job: BackupJob | None = None) -> list[Path]:
        """The backup job's ``paths``, relative ones read from the config file's folder."""
        job = job or self.backup_job()
        base = self.ctx.loaded.path.parent
        paths = job.paths if job is not None else []
        return [p.expanduser() if p.expanduser().is_absolute() else base / p for p in paths]

    async def create(self, label: str = "", job: BackupJob | None = None) -> backup.BackupInfo:
        """Take a backup now."""
        async with self._lock:
            return await self._create(label, job)

    async def _create(self, label: str, job: BackupJob | None = None) -> backup.BackupInfo:
        info = await asyncio.to_thread(
            backup.create_backup,
            dest=self.folder,
            config_path=self.ctx.loaded.path,
            state_dir=self.ctx.paths.state_dir,
            extra_paths=self.extra_paths(job),
            now=datetime.now(UTC),
            label=label,
        )
        log.info("backup %s written (%d bytes)", info.id, info.size)
        return info

    async def listing(self) -> dict[str, Any]:
        """The backups on disk, newest first, and where they are."""
        found = await asyncio.to_thread(backup.list_backups, self.folder)
        return {"dir": str(self.folder), "backups": [b.as_json() for b in found]}

    async def restore(self, backup_id: str) -> dict[str, Any]:
        """Restore ``backup_id``; :class:`backup.BackupError` when it is refused (nothing
        changed), :class:`RestoreFailed` when the daemon could not take the files up."""
        async with self._lock:
            info = await asyncio.to_thread(backup.find_backup, self.folder, backup_id)
            plan = await asyncio.to_thread(
                backup.verify,
                info.path,
                config_path=self.ctx.loaded.path,
                state_dir=self.ctx.paths.state_dir,
                extra_paths=self.extra_paths(),
                staging_parent=self.ctx.paths.state_dir,
            )
            try:
                safety = await self._create("pre-restore")
            except BaseException:
                await asyncio.to_thread(plan.discard)
                raise
            written = await asyncio.to_thread(backup.apply_restore, plan)
            log.warning(
                "restored backup %s (%d files); the files it replaced are in backup %s",
                info.id,
                len(written),
                safety.id,
            )
        self.on_state_restored()
        try:
            reloaded = await self.ctx.reload()
        except ReloadRefused as exc:
            raise RestoreFailed(
                f"restored {info.id}, but helixd refused to reload it: {exc}; the previous "
                f"files are in backup {safety.id} (helixctl backup restore {safety.id})"
            ) from None
        return {
            "restored": info.id,
            "safety_backup": safety.id,
            "files": [str(p) for p in written],
            "skipped": plan.skipped,
            "notes": plan.notes,
            "reload": reloaded,
        }

    async def prune(self, job: BackupJob) -> list[backup.BackupInfo]:
        """Delete what ``job``'s retention no longer keeps (never during a restore, which
        may be reading an archive retention would drop)."""
        async with self._lock:
            return await self._prune(job)

    async def _prune(self, job: BackupJob) -> list[backup.BackupInfo]:
        if not await asyncio.to_thread(self.folder.is_dir):
            return []
        return await asyncio.to_thread(backup.prune, self.folder, job.keep_daily, job.keep_weekly)


async def run_backup(ctx: JobContext, job: BackupJob, ops: BackupOps) -> JobOutcome:
    """The backup job: take one, then prune what retention no longer keeps."""
    async with ops._lock:
        info = await ops._create("", job)
        pruned = await ops._prune(job)
    kept = len(await asyncio.to_thread(backup.list_backups, ops.folder))
    note = f"; pruned {len(pruned)} past retention" if pruned else ""
    return JobOutcome(
        True,
        f"wrote {info.id} ({info.size} bytes); {kept} kept{note}",
        {"backup": info.as_json(), "pruned": [b.id for b in pruned], "kept": kept},
    )
