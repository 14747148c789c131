"""The cleanup job: rotated provider logs, backups past retention, stale temporary files.

What it deletes, and nothing else:

- rotated logs (``NAME.log.1`` … in the log dir) older than ``log_max_age``, and the
  current log of a process no longer configured, once it is that old too;
- backups the backup job's retention no longer keeps (through :class:`BackupOps`, so
  never while a backup or restore runs);
- temporary files an interrupted atomic write left (``.NAME.*.tmp``) and restore staging
  folders (``.restore-*``), older than ``temp_max_age``, in the state, backup and log dirs.

The walk runs in a thread; the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from helixd.config.jobs import CleanupJob
from helixd.jobs import backup
from helixd.jobs.backup_ops import BackupOps
from helixd.jobs.base import JobContext, JobOutcome

_ROTATED_LOG = re.compile(r"^(?P<name>.+)\.log\.\d+$")
_TEMP_FILE = re.compile(r"^\..+\.tmp$")


@dataclass
class Freed:
    """What one cleanup removed."""

    bytes: int = 0
    logs: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)
    temp: list[str] = field(default_factory=list)


async def run_cleanup(ctx: JobContext, job: CleanupJob, ops: BackupOps) -> JobOutcome:
    """Prune what has outlived its use and report the bytes freed."""
    config = ctx.loaded.config
    backup_job = ops.backup_job()
    # Every process the config can run: providers, and each model as provider:model.
    live = set(config.providers) | {f"{m.provider}:{n}" for n, m in config.models.items()}
    freed = await asyncio.to_thread(
        clean,
        state_dir=ctx.paths.state_dir,
        log_dir=ctx.paths.log_dir,
        live_logs=live,
        job=job,
    )
    if backup_job is not None:
        for info in await ops.prune(backup_job):
            freed.bytes += info.size
            freed.backups.append(info.id)
    parts = [
        f"{len(freed.logs)} old log(s)",
        f"{len(freed.backups)} backup(s) past retention",
        f"{len(freed.temp)} stale temporary file(s)",
    ]
    return JobOutcome(
        True,
        f"freed {_human(freed.bytes)}: " + ", ".join(parts),
        {
            "bytes_freed": freed.bytes,
            "logs": freed.logs,
            "backups": freed.backups,
            "temp": freed.temp,
        },
    )


def clean(
    *,
    state_dir: Path,
    log_dir: Path,
    live_logs: Collection[str],
    job: CleanupJob,
    now: Callable[[], float] = time.time,
) -> Freed:
    """The cleanup itself (blocking; the job runs it in a thread)."""
    freed = Freed()
    cutoff_logs = now() - job.log_max_age
    cutoff_temp = now() - job.temp_max_age
    for path in _files(log_dir):
        rotated = _ROTATED_LOG.match(path.name)
        orphan = path.suffix == ".log" and path.stem not in live_logs
        if (rotated or orphan) and _older(path, cutoff_logs):
            freed.bytes += _remove(path)
            freed.logs.append(path.name)
    backups = backup.backup_dir(state_dir)
    for folder in dict.fromkeys((state_dir, backups, log_dir)):
        for path in _entries(folder):
            temp = _TEMP_FILE.match(path.name) and path.is_file()
            staging = path.name.startswith(".restore-") and path.is_dir()
            if (temp or staging) and _older(path, cutoff_temp):
                freed.bytes += _remove(path)
                freed.temp.append(str(path))
    return freed


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _files(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_file() and not p.is_symlink()]


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except OSError:
        return False


def _remove(path: Path) -> int:
    """Delete a file or a staging folder; the bytes it held (0 if it went meanwhile)."""
    try:
        if path.is_dir() and not path.is_symlink():
            size = sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path)
            return size
        size = path.lstat().st_size
        path.unlink()
        return size
    except OSError:
        return 0


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
