"""Backups of helixd's config, state and declared extra paths, their retention and restore.

A backup is ``helixd-YYYYMMDDTHHMMSSZ[-N][-label].tar.gz`` (mode 0600) in the backup folder
(0700): ``manifest.json`` first, then ``config/<file>``, ``state/<file>`` for each of
:data:`STATE_FILES`, and ``extra-N/...`` for each ``[jobs.backup] paths`` entry. It is
written to a temp file and renamed, so a crash never leaves a torn backup under a real
name. Restoring goes through :func:`verify` (``archive.py``: every member checked and
staged, nothing written outside the staging folder) and then :func:`apply_restore`, which
switches each file atomically.

Everything here blocks; the daemon calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from helixd import __version__
from helixd.jobs.archive import (
    FORMAT,
    MAX_BYTES,
    MAX_MEMBERS,
    STATE_FILES,
    BackupError,
    RestorePlan,
    StagedFile,
    absolute,
    check_target,
    file_cap,
    make_private_dirs,
    name_problem,
    resolve_extras,
    verify,
)
from helixd.state import fsync_dir, size_text

__all__ = [
    "STATE_FILES",
    "BackupError",
    "BackupInfo",
    "RestorePlan",
    "StagedFile",
    "UnknownBackup",
    "apply_restore",
    "backup_dir",
    "create_backup",
    "find_backup",
    "list_backups",
    "plan_retention",
    "prune",
    "resolve_extras",
    "verify",
]

log = logging.getLogger(__name__)

_STAMP = "%Y%m%dT%H%M%SZ"
_LABEL_RE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_NAME_RE = re.compile(
    r"helixd-(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<seq>[2-9]|[1-9]\d+))?"
    r"(?:-(?P<label>[a-z][a-z0-9]*(?:-[a-z0-9]+)*))?\.tar\.gz"
)


@dataclass(frozen=True)
class BackupInfo:
    """One backup file; ``created`` comes from its name (UTC), never from its mtime."""

    id: str
    path: Path
    created: datetime
    size: int
    label: str
    seq: int = 1  # 2, 3, … for a second, third backup within the same second
    # What create_backup left out (symlinks, special files); not part of the identity.
    notes: tuple[str, ...] = field(default=(), compare=False)

    def as_json(self) -> dict[str, Any]:
        """id, path, created (ISO 8601, Z), size, label; notes when there are any."""
        out: dict[str, Any] = {
            "id": self.id,
            "path": str(self.path),
            "created": self.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "size": self.size,
            "label": self.label,
        }
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def backup_dir(state_dir: Path) -> Path:
    """Where backups live: ``state_dir/backups``."""
    return state_dir / "backups"


@dataclass(frozen=True)
class _Entry:
    arcname: str
    source: Path
    follow: bool  # the roots the user named may be symlinks; what a folder holds may not


def create_backup(
    *,
    dest: Path,
    config_path: Path,
    state_dir: Path,
    extra_paths: Sequence[Path],
    now: datetime,
    label: str = "",
) -> BackupInfo:
    """Write a new backup into ``dest`` atomically and return it.

    ``extra_paths`` may be relative to the config file. A missing extra path fails the
    backup: an incomplete one would restore less than the user believes it holds.
    """
    if label and not (len(label) <= 40 and _LABEL_RE.fullmatch(label)):
        raise BackupError(
            f"backup label {label!r}: use lowercase letters, digits and '-', "
            "starting with a letter (at most 40), e.g. 'manual'"
        )
    when = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    config_path, state_dir = absolute(config_path), absolute(state_dir)
    extras = resolve_extras(config_path, extra_paths)
    notes: list[str] = []
    entries, kinds = _collect(config_path, state_dir, extras, absolute(dest), notes)
    roots = {"config": str(config_path), "state": str(state_dir)}
    roots.update({f"extra-{i}": str(p) for i, p in enumerate(extras)})
    manifest = {
        "format": FORMAT,
        "helixd": __version__,
        "created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": socket.gethostname(),
        "roots": roots,
        "kinds": kinds,
        "files": len(entries),
    }
    path = _write_archive(dest, manifest, entries, when, label)
    for note in notes:
        log.warning("backup %s: %s", path.name, note)
    info = _parse(path)
    assert info is not None  # we chose the name
    return dataclasses.replace(info, notes=tuple(notes))


def _write_archive(
    dest: Path, manifest: dict[str, Any], entries: list[_Entry], when: datetime, label: str
) -> Path:
    """Temp file, fsync, rename, fsync the folder: a backup appears whole or not at all."""
    stamp = when.strftime(_STAMP)
    tmp = ""
    try:
        make_private_dirs(dest)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{_file_name(stamp, 1, label)}.", suffix=".tmp", dir=dest
        )
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            _write_tar(out, manifest, entries, when)
            out.flush()
            os.fsync(out.fileno())
        path = _publish(Path(tmp), dest, stamp, label)
        fsync_dir(dest)
        return path
    except BaseException as exc:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            why = f"the disk is full ({exc.strerror}); free space" if full else str(exc)
            raise BackupError(f"writing a backup into {dest} failed: {why}") from None
        raise


def _file_name(stamp: str, seq: int, label: str) -> str:
    return (
        f"helixd-{stamp}"
        + (f"-{seq}" if seq > 1 else "")
        + (f"-{label}" if label else "")
        + ".tar.gz"
    )


def _collect(
    config_path: Path, state_dir: Path, extras: list[Path], dest: Path, notes: list[str]
) -> tuple[list[_Entry], dict[str, str]]:
    """The files to archive, in archive order, and each extra root's kind."""
    if not config_path.is_file():
        raise BackupError(f"{config_path}: the config file is missing or not a file")
    entries = [_Entry(f"config/{config_path.name}", config_path, True)]
    entries += [
        _Entry(f"state/{name}", state_dir / name, True)
        for name in STATE_FILES
        if (state_dir / name).is_file()
    ]
    kinds: dict[str, str] = {}
    for i, extra in enumerate(extras):
        key = f"extra-{i}"
        if extra.is_file() and extra.name:
            kinds[key] = "file"
            entries.append(_Entry(f"{key}/{extra.name}", extra, True))
        elif extra.is_dir():
            kinds[key] = "folder"
            entries += _walk(extra, key, dest, notes)
        else:
            what = "is neither a file nor a folder" if extra.exists() else "does not exist"
            raise BackupError(
                f"{extra} {what}; fix [jobs.backup] paths (or create it) and run the backup again"
            )
    entries = [e for e in entries if _within_cap(e, e.source.stat().st_size, notes)]
    if len(entries) >= MAX_MEMBERS:
        raise BackupError(
            f"the backup would hold {len(entries)} files, more than a restore accepts "
            f"({MAX_MEMBERS - 1}); trim [jobs.backup] paths"
        )
    total = sum(e.source.stat().st_size for e in entries)
    if total > MAX_BYTES:
        raise BackupError(
            f"the backup would hold {total} bytes, more than a restore accepts ({MAX_BYTES}); "
            "[jobs.backup] paths is for config-sized files, not models"
        )
    return entries, kinds


def _within_cap(entry: _Entry, size: int, notes: list[str]) -> bool:
    """Whether ``entry`` fits its per-file cap (:func:`file_cap`: a restore refuses a member
    over it). A state file over it is left out with a note, as helixd would not read it
    either; a config or an extra path over it fails the backup, naming the file."""
    cap, what = file_cap(entry.arcname)
    if size <= cap:
        return True
    over = f"{size_text(size)}, over the {size_text(cap)} cap on {what}"
    if entry.arcname.startswith("state/"):
        notes.append(f"skipped {entry.source}: {over} (helixd does not read it either)")
        return False
    if entry.arcname.startswith("config/"):
        raise BackupError(f"{entry.source} is {over}: that is no helixd config; check the file")
    raise BackupError(
        f"{entry.source} is {over}; [jobs.backup] paths is for config-sized files, "
        "not models: remove it from paths"
    )


def _walk(folder: Path, prefix: str, dest: Path, notes: list[str]) -> list[_Entry]:
    """Regular files under ``folder``, sorted, without following any symlink."""
    found: list[_Entry] = []
    stack = [(folder, prefix)]
    while stack:
        current, arc = stack.pop()
        try:
            with os.scandir(current) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise BackupError(
                f"cannot list {current}: {exc.strerror}; make it readable by helixd "
                "or remove it from [jobs.backup] paths"
            ) from None
        subfolders: list[tuple[Path, str]] = []
        for child in children:
            path, name = Path(child.path), f"{arc}/{child.name}"
            if name_problem(name):
                notes.append(f"skipped {path}: a name a restore would refuse")
            elif child.is_symlink():
                notes.append(f"skipped symlink {path}: backups hold no links")
            elif child.is_dir(follow_symlinks=False):
                if Path(os.path.realpath(path)) == Path(os.path.realpath(dest)):
                    notes.append(f"skipped {path}: it is the backup folder itself")
                else:
                    subfolders.append((path, name))
            elif child.is_file(follow_symlinks=False):
                found.append(_Entry(name, path, False))
            else:
                notes.append(f"skipped {path}: not a regular file or folder")
        stack += reversed(subfolders)
    return found


def _write_tar(
    out: IO[bytes], manifest: dict[str, Any], entries: list[_Entry], when: datetime
) -> None:
    """Members with neutral owners and modes: an archive says nothing about who made it."""
    with (
        gzip.GzipFile(fileobj=out, mode="wb", mtime=int(when.timestamp())) as gz,
        tarfile.open(fileobj=gz, mode="w:", format=tarfile.PAX_FORMAT) as tar,
    ):
        data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        info = _tarinfo("manifest.json", len(data), 0o600, when.timestamp())
        tar.addfile(info, io.BytesIO(data))
        for entry in entries:
            _add_file(tar, entry)


def _tarinfo(name: str, size: int, mode: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_file(tar: tarfile.TarFile, entry: _Entry) -> None:
    flags = os.O_RDONLY | (0 if entry.follow else os.O_NOFOLLOW)
    try:
        fd = os.open(entry.source, flags)
    except FileNotFoundError:
        raise BackupError(f"{entry.source} vanished while the backup ran; run it again") from None
    except OSError as exc:
        raise BackupError(
            f"cannot read {entry.source}: {exc.strerror}; make it readable by helixd "
            "or remove it from [jobs.backup] paths"
        ) from None
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BackupError(f"{entry.source} is no longer a regular file; run the backup again")
        cap, _ = file_cap(entry.arcname)
        if st.st_size > cap:
            raise BackupError(
                f"{entry.source} grew past {size_text(cap)} while the backup ran, more than "
                "a restore accepts for it; run the backup again"
            )
        mode = 0o700 if st.st_mode & stat.S_IXUSR else 0o600
        try:
            tar.addfile(_tarinfo(entry.arcname, st.st_size, mode, st.st_mtime), src)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # the archive could not be written: not this file's fault
            raise BackupError(f"backing up {entry.source} failed: {exc}") from None


def _publish(tmp: Path, dest: Path, stamp: str, label: str) -> Path:
    """Rename the finished temp file to the first sequence number no backup of this second
    uses, whatever its label, so that names order backups. Callers serialise backups
    (``BackupOps`` holds a lock), so the check cannot race another writer."""
    taken = {b.seq for b in list_backups(dest) if b.created.strftime(_STAMP) == stamp}
    seq = next(n for n in range(1, len(taken) + 2) if n not in taken)
    final = dest / _file_name(stamp, seq, label)
    os.replace(tmp, final)
    return final


def _parse(path: Path) -> BackupInfo | None:
    match = _NAME_RE.fullmatch(path.name)
    if not match:
        return None
    try:
        created = datetime.strptime(match["stamp"], _STAMP).replace(tzinfo=UTC)
        size = path.lstat().st_size
    except (ValueError, OSError):
        return None
    return BackupInfo(
        id=path.name.removesuffix(".tar.gz"),
        path=path,
        created=created,
        size=size,
        label=match["label"] or "",
        seq=int(match["seq"] or 1),
    )


def _age(info: BackupInfo) -> tuple[datetime, int, str]:
    return (info.created, info.seq, info.id)


def list_backups(dest: Path) -> list[BackupInfo]:
    """The backups in ``dest``, newest first; temp files and foreign names are ignored."""
    try:
        with os.scandir(dest) as it:
            candidates = [Path(e.path) for e in it if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    found = [info for info in map(_parse, candidates) if info is not None]
    return sorted(found, key=_age, reverse=True)


class UnknownBackup(BackupError):
    """No backup of that id in the backups folder."""

    code = "unknown_backup"


def find_backup(dest: Path, backup_id: str) -> BackupInfo:
    """The backup named ``backup_id`` (``.tar.gz`` optional)."""
    wanted = backup_id.removesuffix(".tar.gz")
    if "/" not in wanted and ".." not in wanted and "\x00" not in wanted:
        for info in list_backups(dest):
            if info.id == wanted:
                return info
    raise UnknownBackup(f"no backup named {backup_id!r}; helixctl backup list shows them")


def plan_retention(
    backups: Sequence[BackupInfo], keep_daily: int, keep_weekly: int
) -> list[BackupInfo]:
    """The backups to delete (newest first): all but the newest of each of the
    ``keep_daily`` latest UTC days and ``keep_weekly`` latest ISO weeks that have backups,
    and the newest overall. Labels do not matter. Pure."""
    ordered = sorted(backups, key=_age, reverse=True)
    keep: set[int] = {0} if ordered else set()
    days: set[object] = set()
    weeks: set[object] = set()
    for i, info in enumerate(ordered):
        created = info.created.astimezone(UTC)
        day, week = created.date(), created.isocalendar()[:2]
        if day not in days:
            days.add(day)
            if len(days) <= keep_daily:
                keep.add(i)
        if week not in weeks:
            weeks.add(week)
            if len(weeks) <= keep_weekly:
                keep.add(i)
    return [info for i, info in enumerate(ordered) if i not in keep]


def prune(dest: Path, keep_daily: int, keep_weekly: int) -> list[BackupInfo]:
    """Delete what :func:`plan_retention` chooses; return what was deleted."""
    doomed = plan_retention(list_backups(dest), keep_daily, keep_weekly)
    for info in doomed:
        try:
            info.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BackupError(f"cannot delete old backup {info.path}: {exc.strerror}") from None
    if doomed:
        fsync_dir(dest)
    return doomed


def apply_restore(plan: RestorePlan) -> list[Path]:
    """Switch each staged file into place atomically; return the targets written.

    Files that exist now but are not in the archive stay. The staging folder is removed
    in the end, also on failure (the message then says what was already restored).
    """
    written: list[Path] = []
    try:
        for item in plan.files:
            try:
                check_target(item.target, item.root)  # the tree may have changed since verify
                _switch(item)
            except (OSError, BackupError) as exc:
                done = ", ".join(map(str, written[:5])) or "nothing"
                done += f" and {len(written) - 5} more" if len(written) > 5 else ""
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise BackupError(
                    f"restoring {item.target} failed: {reason}; restored before it: {done}"
                ) from None
            written.append(item.target)
        for folder in {t.parent for t in written}:
            fsync_dir(folder)
    finally:
        plan.discard()
    return written


def _switch(item: StagedFile) -> None:
    """One file into place: a rename when staging shares its filesystem, else a copy into
    a temp file beside the target, then a rename. Either way readers see old or new."""
    make_private_dirs(item.target.parent)
    try:
        st = os.lstat(item.target)
        mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else item.mode
    except FileNotFoundError:
        mode = item.mode
    os.chmod(item.staged, mode)
    try:
        os.replace(item.staged, item.target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    fd, tmp = tempfile.mkstemp(
        prefix=f".{item.target.name}.", suffix=".tmp", dir=item.target.parent
    )
    try:
        with os.fdopen(fd, "wb") as out, open(item.staged, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(tmp, item.target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
