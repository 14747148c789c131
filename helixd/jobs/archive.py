"""Reading a backup archive as if it were hostile, and staging what it may restore.

tarfile trusts what an archive says: member names (``../``, absolute paths), types
(symlinks, hard links, devices) and sizes. ``extractall`` on a crafted archive can write
anywhere helixd can, or fill the disk. So :func:`verify` never extracts: it streams the
archive twice. The first pass writes nothing: it checks every member (name, type, size
against its own cap and the archive's, the member count, root, final target) from its
header, so a hostile archive is refused before a byte is written. Only then the second
pass copies what passed, under neutral names, into a private ``.restore-XXXX`` staging
folder. Nothing outside that folder is touched; on any refusal the folder goes too. The
result is a :class:`RestorePlan`; ``backup.apply_restore`` only renames its files into place.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from helixd.config import MAX_CONFIG_BYTES
from helixd.jobs.base import JobFailed
from helixd.state import MAX_STATE_BYTES, size_text

STATE_FILES = ("residency.json",)
FORMAT = 1
# The whole archive, inflated: the most a restore stages on disk.
MAX_BYTES = 4 * 1024**3
MAX_MEMBERS = 100_000
# One file. A config is a few KiB of TOML; helixd reads it whole, as it reads state files,
# each with a cap (MAX_CONFIG_BYTES, helixd.config; MAX_STATE_BYTES, helixd.state), so
# neither may be bigger than helixd would read. An
# extra path (Modelfiles, templates, an app's small database) may be bigger, but a single
# file over this is a model or a data set, not what ``[jobs.backup] paths`` is for.
MAX_EXTRA_FILE_BYTES = 1024**3
EXTRA_RE = re.compile(r"extra-(0|[1-9][0-9]{0,5})")
_MAX_MANIFEST = 1024 * 1024
# tarfile reads a pax or GNU long-name header into memory whole; no genuine one is near this.
_MAX_SINGLE_READ = 16 * 1024 * 1024
# Headers and padding around the members' bytes: the cap on the inflated stream as a whole.
_SLACK_PER_MEMBER = 8 * 1024
_CHUNK = 1024 * 1024
_REFUSED = "nothing was restored; pick another backup from 'helixctl backup list'"
_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symlink",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


class BackupError(JobFailed):
    """Refused or failed; the message names the culprit (file, member) and the fix."""

    code = "backup_failed"


@dataclass(frozen=True)
class StagedFile:
    """A checked copy waiting in the staging folder, and where it goes."""

    staged: Path
    target: Path
    mode: int  # for a new file; an existing target keeps its own mode
    root: Path  # the target must stay inside it (single-file roots: the target itself)


@dataclass
class RestorePlan:
    """What a verified archive would restore, with its files staged and ready to rename."""

    archive: Path
    manifest: dict[str, Any]
    files: list[StagedFile]
    skipped: list[str]
    notes: list[str]
    staging: Path

    def describe(self) -> str:
        """Several lines for humans: where from, what is written where, what is skipped."""
        m = self.manifest
        lines = [
            f"restore from {self.archive} (made {m.get('created')} on {m.get('hostname')} "
            f"by helixd {m.get('helixd')}):"
        ]
        counts: dict[Path, int] = {}
        for item in self.files:
            counts[item.root] = counts.get(item.root, 0) + 1
        for root, n in counts.items():
            lines.append(f"  {root}: {n} file{'s' if n != 1 else ''}")
        lines += [f"  skipped: {s}" for s in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        """The plan for the control API."""
        return {
            "archive": str(self.archive),
            "created": self.manifest.get("created"),
            "hostname": self.manifest.get("hostname"),
            "helixd": self.manifest.get("helixd"),
            "files": [str(item.target) for item in self.files],
            "skipped": list(self.skipped),
            "notes": list(self.notes),
        }

    def discard(self) -> None:
        """Remove the staging folder (a plan that will not be applied)."""
        shutil.rmtree(self.staging, ignore_errors=True)


def file_cap(arcname: str) -> tuple[int, str]:
    """The most bytes the archive member ``arcname`` may hold, and what it is, for messages."""
    if arcname == "manifest.json":
        return _MAX_MANIFEST, "manifest.json"
    top = arcname.split("/", 1)[0]
    if top == "config":
        return MAX_CONFIG_BYTES, "the config file"
    if top == "state":
        return MAX_STATE_BYTES, "a state file"
    return MAX_EXTRA_FILE_BYTES, "one file of [jobs.backup] paths"


def absolute(path: Path | str) -> Path:
    """``path`` made absolute and normalised lexically: symlinks are not resolved, so the
    string the user wrote in the config stays recognisable in the manifest."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def resolve_extras(config_path: Path, extra_paths: Sequence[Path]) -> list[Path]:
    """``[jobs.backup] paths`` as absolute paths (relative ones are relative to the
    config file, as the config documents), duplicates dropped, order kept."""
    base = absolute(config_path).parent
    out: list[Path] = []
    for p in extra_paths:
        p = Path(os.path.expanduser(p))
        resolved = absolute(p if p.is_absolute() else base / p)
        if resolved not in out:
            out.append(resolved)
    return out


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and missing parents with mode 0700 (mkdir's parents get 0777)."""
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
            os.chmod(folder, 0o700)  # the umask may have taken bits; 0700 is the point


def name_problem(name: str) -> str | None:
    """Why ``name`` (a member name, without a directory's trailing '/') is unsafe, or None."""
    if not name:
        return "an empty name"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):  # NUL included
        return "a control character in the name"
    if "\\" in name:
        return "a backslash in the name"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept as surrogate escapes
        return "a name that is not UTF-8"
    if name.startswith("/"):
        return "an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "a '..' component"
    if "" in parts or "." in parts:
        return "an empty or '.' component"
    return None


def check_target(target: Path, root: Path, folders_ok: set[Path] | None = None) -> None:
    """Refuse a target outside ``root``, a folder in its place, or a path that an existing
    symlink or file would carry elsewhere. Called at verify time and again just before
    the write, as the tree may change in between. ``folders_ok``: parent folders already
    found safe in this pass (their checks walk the path: with many files in one folder,
    they would cost far more than the rest of a check); it is filled in as they pass."""
    if os.path.normpath(target) != os.fspath(target) or not _inside(target, root):
        raise BackupError(f"restore target {target} is outside {root}; {_REFUSED}")
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if stat.S_ISDIR(os.lstat(target).st_mode):
            raise BackupError(
                f"{target} is a folder now, where the backup has a file; move it away to restore"
            )
    if target == root or (folders_ok is not None and target.parent in folders_ok):
        return
    if not Path(os.path.realpath(target.parent)).is_relative_to(os.path.realpath(root)):
        raise BackupError(
            f"{target.parent} leads outside {root} through a symlink; restoring {target} "
            "there would write elsewhere; remove the symlink or restore by hand"
        )
    probe = target.parent
    while not os.path.lexists(probe) and probe != root:
        probe = probe.parent
    if os.path.lexists(probe) and not os.path.isdir(probe):
        raise BackupError(
            f"{probe} is a file now, where the backup has a folder holding {target}; "
            "move it away to restore"
        )
    if folders_ok is not None:
        folders_ok.add(target.parent)


def _inside(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or below it, lexically (pathlib's is_relative_to, without its
    cost: verify asks once or twice for each of up to MAX_MEMBERS members)."""
    text, top = os.fspath(path), os.fspath(root)
    return text == top or text.startswith(top.rstrip("/") + "/")


class _Oversize(BackupError):
    """The inflated stream grew past its cap."""

    code = "archive_too_large"


class _CappedReader:
    """The decompressed archive, refusing to inflate past ``cap`` bytes in total or to
    hand tarfile one enormous header: a gzip bomb stops before it fills disk or memory."""

    def __init__(self, inner: gzip.GzipFile, cap: int) -> None:
        self._inner = inner
        self._cap = cap

    def read(self, size: int = -1) -> bytes:
        if size > _MAX_SINGLE_READ:
            raise _Oversize(f"a tar header of {size} bytes, far beyond any backup's")
        room = self._cap - self._inner.tell()
        data = self._inner.read(room + 1 if size < 0 else min(size, room + 1))
        if len(data) > room:
            raise _Oversize(f"it inflates to more than {self._cap} bytes")
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET and offset > self._cap:
            raise _Oversize(f"it inflates to more than {self._cap} bytes")
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()


def verify(
    archive: Path,
    *,
    config_path: Path,
    state_dir: Path,
    extra_paths: Sequence[Path],
    staging_parent: Path,
    max_bytes: int = MAX_BYTES,
    max_members: int = MAX_MEMBERS,
) -> RestorePlan:
    """Check ``archive`` member by member and stage what it would restore.

    Raises :class:`BackupError` (naming the member and the reason) for anything a backup
    made by helixd never contains; the roots are not touched, the staging folder is gone.
    Whatever the first pass refuses (names, types, sizes, counts, targets) is refused
    before anything is written, the staging folder included.
    """
    check = _ArchiveCheck(
        archive=archive,
        config_path=absolute(config_path),
        state_dir=absolute(state_dir),
        extras=resolve_extras(config_path, extra_paths),
        max_bytes=max_bytes,
        max_members=max_members,
    )
    try:
        raw = open(archive, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise BackupError(f"cannot read {archive}: {exc.strerror}") from None
    with raw:
        check.scan(raw)
        make_private_dirs(staging_parent)
        staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=staging_parent))
        try:
            check.stage(raw, staging)
            return check.plan()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


@dataclass(frozen=True)
class _Wanted:
    """A member the first pass passed for staging, and what the second must find there."""

    name: str
    size: int
    type: bytes
    target: Path
    root: Path
    mode: int
    top: str


@dataclass
class _ArchiveCheck:
    """The two passes over an archive: the checks' running state and the plan taking shape."""

    archive: Path
    config_path: Path
    state_dir: Path
    extras: list[Path]
    max_bytes: int
    max_members: int
    manifest: dict[str, Any] | None = None
    total: int = 0
    file_count: int = 0
    config_seen: bool = False
    names: set[str] = field(default_factory=set)
    file_names: set[str] = field(default_factory=set)
    ancestors: set[str] = field(default_factory=set)
    files: list[StagedFile] = field(default_factory=list)
    targets: set[Path] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)
    writable: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wanted: dict[int, _Wanted] = field(default_factory=dict)  # by position in the archive
    folders_ok: set[Path] = field(default_factory=set)  # see check_target
    roots_now: dict[str, Path] = field(default_factory=dict)  # extra-N: its path, absolute
    staging: Path | None = None

    def scan(self, raw: IO[bytes]) -> None:
        """The first pass: every check, from the headers (and the manifest); writes nothing."""
        self._walk(raw, self._member)
        self._finish()

    def stage(self, raw: IO[bytes], staging: Path) -> None:
        """The second pass: copy the members the first one passed into ``staging``."""
        self.staging = staging
        if self.wanted:
            self._walk(raw, self._stage_member)
        if len(self.files) != len(self.wanted):
            raise self._changed()

    def _changed(self) -> BackupError:
        return BackupError(f"{self.archive} changed while it was being checked; {_REFUSED}")

    def _walk(
        self,
        raw: IO[bytes],
        visit: Callable[[tarfile.TarFile, tarfile.TarInfo, int], bool],
    ) -> None:
        """One pass from the archive's start, within the inflation and member caps, calling
        ``visit`` with each member and its position until it returns False."""
        cap = self.max_bytes + (self.max_members + 2) * _SLACK_PER_MEMBER
        try:
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                capped = cast(IO[bytes], _CappedReader(gz, cap))
                with tarfile.open(fileobj=capped, mode="r:") as tar:
                    for count, member in enumerate(tar, 1):
                        if count > self.max_members:
                            raise BackupError(
                                f"{self.archive} has more than {self.max_members} members; "
                                f"refused; {_REFUSED}"
                            )
                        if not visit(tar, member, count):
                            break
        except _Oversize as exc:
            raise BackupError(f"{self.archive} refused: {exc}; {_REFUSED}") from None
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            reason = str(exc) or type(exc).__name__
            raise BackupError(
                f"{self.archive} is not a readable backup: {reason}; {_REFUSED}"
            ) from None
        except OSError as exc:  # reading the archive, or the staging folder's disk
            raise BackupError(f"checking {self.archive} failed: {exc}") from None

    def _refuse(self, name: str, reason: str) -> BackupError:
        return BackupError(f"{self.archive}: member {name!r}: {reason}; {_REFUSED}")

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, count: int) -> bool:
        """Check one member (first pass); note it for staging if it is to be restored."""
        name, top = self._checked_name(member)
        if member.isdir():
            # A root's own entry, or a folder in an extra root (its files carry it).
            if name == "manifest.json" or ("/" in name and top in ("config", "state")):
                raise self._refuse(name, "a folder where only files belong")
            return True
        if member.size < 0:
            raise self._refuse(name, "a negative size")
        cap, what = file_cap(name)
        if member.size > cap:
            size, most = size_text(member.size), size_text(cap)
            raise self._refuse(name, f"{size}, over the {most} cap on {what}")
        self.total += member.size
        if self.total > self.max_bytes:
            raise self._refuse(name, f"the members add up to more than {self.max_bytes} bytes")
        if self.manifest is None:
            self.manifest = self._read_manifest(tar, member)
            return True
        if name == "manifest.json":
            raise self._refuse(name, "a second manifest.json")
        self.file_count += 1
        placed = self._target(name)
        if placed is None or placed[0] in self.targets:
            return True  # a skipped root, or a file two overlapping extras both hold
        target, root = placed
        check_target(target, root, self.folders_ok)
        if not self._writable(top, name, target, root):
            return True
        if os.path.islink(target):
            self.notes.append(f"{target} is a symlink now; the restore replaces the link")
        self.targets.add(target)
        mode = 0o700 if member.mode & 0o100 else 0o600
        self.wanted[count] = _Wanted(name, member.size, member.type, target, root, mode, top)
        return True

    def _stage_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, count: int) -> bool:
        """Stage one member the first pass chose (second pass); False once all are staged."""
        wanted = self.wanted.get(count)
        if wanted is None:
            return True
        if (member.name, member.size, member.type) != (wanted.name, wanted.size, wanted.type):
            raise self._changed()
        staged = self._stage(tar, member, wanted.name)
        if wanted.top == "config":
            staged = self._validate_config(staged)
        self.files.append(
            StagedFile(staged=staged, target=wanted.target, mode=wanted.mode, root=wanted.root)
        )
        return len(self.files) < len(self.wanted)

    def _checked_name(self, member: tarfile.TarInfo) -> tuple[str, str]:
        """The member's name and its top folder, once name, type and layout pass."""
        name = member.name[:-1] if member.isdir() and member.name.endswith("/") else member.name
        problem = name_problem(name)
        if problem:
            raise self._refuse(member.name, problem)
        top = name.split("/", 1)[0]
        known = name == "manifest.json" or top in ("config", "state") or EXTRA_RE.fullmatch(top)
        if not known:
            roots = "manifest.json, config/, state/, extra-N/"
            raise self._refuse(name, f"outside the archive's roots ({roots})")
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
            kind = _TYPE_NAMES.get(member.type, f"of tar type {member.type!r}")
            raise self._refuse(name, f"{kind}; only regular files and folders are restored")
        self._check_layout(name, member.isdir())
        if self.manifest is None and name != "manifest.json":
            raise self._refuse(name, "the first member must be manifest.json: not a helixd backup")
        return name, top

    def _writable(self, top: str, name: str, target: Path, root: Path) -> bool:
        """Whether helixd may write ``root``; if not, the root is skipped with a note saying
        how to restore it by hand, rather than failing halfway through the restore."""
        if top not in self.writable:
            probe = target.parent if target == root else root
            while not os.path.lexists(probe):
                probe = probe.parent
            self.writable[top] = ok = os.access(probe, os.W_OK)
            if not ok and top == "config":
                self.skipped[top] = (
                    f"the config {target} is in a folder helixd cannot write (systemd keeps "
                    "/etc read-only to the service), so it was not restored; to restore it "
                    f"too, as root: tar -xzOf {self.archive} {name} > {target}"
                )
            elif not ok:
                self.skipped[top] = (
                    f"{probe} is not writable by helixd (under systemd, add it to "
                    f"ReadWritePaths= in a drop-in), so the archive's {top} was not restored"
                )
        return self.writable[top]

    def _check_layout(self, name: str, is_dir: bool) -> None:
        """No duplicates, and no member inside another that is a file."""
        if name in self.names:
            raise self._refuse(name, "a duplicate")
        parts = name.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if any(p in self.file_names for p in prefixes) or (not is_dir and name in self.ancestors):
            raise self._refuse(name, "a path that is both a file and a folder in this archive")
        self.names.add(name)
        self.ancestors.update(prefixes)
        if not is_dir:
            self.file_names.add(name)

    def _read_manifest(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, Any]:
        src = tar.extractfile(member)  # within file_cap's bound, checked by the caller
        assert src is not None  # a regular file, checked above
        try:
            manifest = json.loads(src.read())
        except ValueError as exc:
            raise self._refuse("manifest.json", f"not valid JSON ({exc})") from None
        except RecursionError:
            raise self._refuse("manifest.json", "not valid JSON (nested too deeply)") from None
        return _checked_manifest(manifest, self._refuse)

    def _target(self, name: str) -> tuple[Path, Path] | None:
        """Where the file member ``name`` goes and the root it must stay in; None: skipped."""
        parts = name.split("/")
        top, rest = parts[0], parts[1:]
        if top == "config":
            if len(rest) != 1:
                raise self._refuse(name, "config/ holds only the config file")
            if self.config_seen:
                raise self._refuse(name, "a second file in config/")
            self.config_seen = True
            return self.config_path, self.config_path
        if top == "state":
            if len(rest) != 1 or rest[0] not in STATE_FILES:
                wanted = ", ".join(STATE_FILES)
                raise self._refuse(name, f"unexpected state file (a backup holds {wanted})")
            return self.state_dir / rest[0], self.state_dir
        assert self.manifest is not None
        recorded = self.manifest["roots"].get(top)
        kind = self.manifest["kinds"].get(top)
        if recorded is None or kind is None:
            raise self._refuse(name, f"manifest.json lists no root {top}")
        current = self.roots_now.get(top) or self.roots_now.setdefault(top, absolute(recorded))
        if current not in self.extras:
            self.skipped.setdefault(
                top,
                f"the archive's {top} ({recorded}) is not in [jobs.backup] paths now; "
                "add it back to restore it",
            )
            return None
        if kind == "file":
            if rest != [current.name]:
                raise self._refuse(
                    name,
                    f"{top} was the single file {recorded}, so its one "
                    f"member is {top}/{current.name}",
                )
            return current, current
        target = Path(os.path.normpath(os.path.join(current, *rest)))
        if target == current or not _inside(target, current):
            raise self._refuse(name, f"its target {target} is outside {current}")
        return target, current

    def _stage(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> Path:
        """Copy the member's bytes into the staging folder under a neutral name."""
        assert self.staging is not None
        staged = self.staging / f"{len(self.files):06d}"
        src = tar.extractfile(member)
        assert src is not None
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out, src:
            remaining = member.size
            while remaining > 0:
                chunk = src.read(min(_CHUNK, remaining))
                if not chunk:
                    raise self._refuse(name, "its data ends early (a truncated archive)")
                out.write(chunk)
                remaining -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        return staged

    def _validate_config(self, staged: Path) -> Path:
        """Run the daemon's own validator on the staged config, under its real file name so
        that the messages read as they would for the file itself."""
        from helixd.config import ConfigError, load_config  # config is a layer below jobs

        assert self.staging is not None
        named = self.staging / "config" / self.config_path.name
        named.parent.mkdir(mode=0o700)
        os.rename(staged, named)
        try:
            load_config(named)
        except ConfigError as exc:
            raise BackupError(
                f"the config inside {self.archive} does not validate: {exc}; {_REFUSED}"
            ) from None
        return named

    def _finish(self) -> None:
        if self.manifest is None:
            raise BackupError(f"{self.archive} has no manifest.json; {_REFUSED}")
        if not self.config_seen:
            raise BackupError(f"{self.archive} has no config/ member; {_REFUSED}")
        if self.file_count != self.manifest["files"]:
            raise BackupError(
                f"{self.archive} is incomplete: manifest.json lists {self.manifest['files']} "
                f"files, the archive holds {self.file_count}; {_REFUSED}"
            )
        roots = self.manifest["roots"]
        for key, now in (("config", self.config_path), ("state", self.state_dir)):
            if key in roots and absolute(roots[key]) != now:
                self.notes.append(f"{key} was {roots[key]} when backed up; restored to {now}")

    def plan(self) -> RestorePlan:
        assert self.manifest is not None and self.staging is not None
        # The config goes last: whatever it refers to is in place before it switches.
        files = sorted(self.files, key=lambda f: f.target == self.config_path)
        return RestorePlan(
            archive=self.archive,
            manifest=self.manifest,
            files=files,
            skipped=list(self.skipped.values()),
            notes=self.notes,
            staging=self.staging,
        )


def _checked_manifest(manifest: Any, refuse: Callable[[str, str], BackupError]) -> dict[str, Any]:
    """The manifest's shape, format 1."""
    if not isinstance(manifest, dict):
        raise refuse("manifest.json", "not a JSON object")
    fmt = manifest.get("format")
    if fmt != FORMAT or isinstance(fmt, bool):
        raise refuse("manifest.json", f"format {fmt!r}; this helixd reads format {FORMAT}")
    roots = manifest.get("roots")
    if not isinstance(roots, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in roots.items()
    ):
        raise refuse("manifest.json", "roots is not a table of names to paths")
    kinds = manifest.setdefault("kinds", {})
    if not isinstance(kinds, dict) or not all(v in ("file", "folder") for v in kinds.values()):
        raise refuse("manifest.json", "kinds is not a table of 'file' or 'folder'")
    files = manifest.get("files")
    if not isinstance(files, int) or isinstance(files, bool) or files < 0:
        raise refuse("manifest.json", f"files is {files!r}, not a count")
    return manifest
