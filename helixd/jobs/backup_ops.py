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
import errno
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from helixd.config.jobs import BackupJob
from helixd.errors import JobError, ReloadRefused
from helixd.jobs import backup
from helixd.jobs.base import JobContext, JobOutcome

log = logging.getLogger("helixd.jobs.backup")
T = TypeVar("T")


class RestoreFailed(JobError):
    """The files were restored but the daemon could not take them up; says what to do."""

    code = "restore_failed"


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

    async def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking backup work in a thread; an OS error becomes a message that names
        the file and what to do (a full disk, a folder helixd may not write)."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except OSError as exc:
            raise backup.BackupError(_os_problem(exc, self.folder)) from None

    async def create(self, label: str = "") -> backup.BackupInfo:
        """Take a backup now (retention is the backup job's business)."""
        async with self._lock:
            return await self._create(label, self.backup_job())

    async def backup_and_prune(self, job: BackupJob) -> tuple[backup.BackupInfo, list[Any]]:
        """The backup job's work: a backup, then what ``job``'s retention drops."""
        async with self._lock:
            return await self._create("", job), await self._prune(job)

    async def prune(self, job: BackupJob) -> list[backup.BackupInfo]:
        """Delete what ``job``'s retention no longer keeps (never during a restore, which
        may be reading an archive retention would drop)."""
        async with self._lock:
            return await self._prune(job)

    async def _prune(self, job: BackupJob) -> list[backup.BackupInfo]:
        if not await asyncio.to_thread(self.folder.is_dir):
            return []
        return await self._io(backup.prune, self.folder, job.keep_daily, job.keep_weekly)

    async def _create(self, label: str, job: BackupJob | None) -> backup.BackupInfo:
        info = await self._io(
            backup.create_backup,
            dest=self.folder,
            config_path=self.ctx.loaded.path,
            state_dir=self.ctx.paths.state_dir,
            extra_paths=job.paths if job is not None else [],  # read from the config's folder
            now=datetime.now(UTC),
            label=label,
        )
        log.info("backup %s written (%d bytes)", info.id, info.size)
        return info

    async def listing(self) -> dict[str, Any]:
        """The backups on disk, newest first, and where they are."""
        found = await self._io(backup.list_backups, self.folder)
        return {"dir": str(self.folder), "backups": [b.as_json() for b in found]}

    async def restore(self, backup_id: str) -> dict[str, Any]:
        """Restore ``backup_id``; :class:`backup.BackupError` when it is refused (nothing
        changed), :class:`RestoreFailed` when it stopped part way or the daemon could not
        take the files up (the message names the safety backup that undoes it)."""
        async with self._lock:
            info = await self._io(backup.find_backup, self.folder, backup_id)
            job = self.backup_job()
            plan = await self._io(
                backup.verify,
                info.path,
                config_path=self.ctx.loaded.path,
                state_dir=self.ctx.paths.state_dir,
                extra_paths=job.paths if job is not None else [],
                staging_parent=self.ctx.paths.state_dir,
            )
            try:
                safety = await self._create("pre-restore", job)
            except BaseException:
                await asyncio.to_thread(plan.discard)
                raise
            undo = (
                f"the files it replaced are in backup {safety.id} "
                f"(helixctl backup restore {safety.id})"
            )
            try:
                written = await self._io(backup.apply_restore, plan)
            except backup.BackupError as exc:
                raise RestoreFailed(
                    f"restoring {info.id} stopped part way: {exc}; {undo}"
                ) from None
            log.warning("restored backup %s (%d files); %s", info.id, len(written), undo)
        self.on_state_restored()
        try:
            reloaded = await self.ctx.reload()
        except ReloadRefused as exc:
            raise RestoreFailed(
                f"restored {info.id}, but helixd refused to reload it: {exc}; {undo}"
            ) from None
        return {
            "restored": info.id,
            "safety_backup": safety.id,
            "files": [str(p) for p in written],
            "skipped": plan.skipped,
            "notes": plan.notes,
            "reload": reloaded,
        }


def _os_problem(exc: OSError, folder: Path) -> str:
    where = exc.filename or folder
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}: the disk is full ({exc.strerror}); free space, then run it again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: {exc.strerror}; helixd (its user) must be able to read and write it"
    return f"{where}: {exc.strerror or exc}"


async def run_backup(ctx: JobContext, job: BackupJob, ops: BackupOps) -> JobOutcome:
    """The backup job: take one, then prune what retention no longer keeps."""
    info, pruned = await ops.backup_and_prune(job)
    kept = len(await ops._io(backup.list_backups, ops.folder))
    note = f"; pruned {len(pruned)} past retention" if pruned else ""
    return JobOutcome(
        True,
        f"wrote {info.id} ({info.size} bytes); {kept} kept{note}",
        {"backup": info.as_json(), "pruned": [b.id for b in pruned], "kept": kept},
    )
