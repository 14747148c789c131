"""Backups: the archive format, atomic creation, retention, and the hostile-archive gate.

Every hostile archive is built by hand with tarfile; each must be refused with a message
naming the member and the reason, leaving the roots byte-for-byte as they were and no
staging folder behind.
"""

from __future__ import annotations

import builtins
import errno
import gzip
import io
import json
import os
import random
import re
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helixd.jobs import archive as archive_module
from helixd.jobs import backup
from helixd.jobs.archive import (
    MAX_BYTES,
    MAX_CONFIG_BYTES,
    MAX_EXTRA_FILE_BYTES,
    MAX_MEMBERS,
)
from helixd.jobs.backup import (
    BackupError,
    BackupInfo,
    apply_restore,
    create_backup,
    find_backup,
    list_backups,
    plan_retention,
    prune,
    verify,
)
from helixd.state import MAX_STATE_BYTES

NOW = datetime(2026, 11, 24, 3, 0, 0, tzinfo=UTC)
CONFIG = '[providers.demo]\nkind = "echo"\n'
CONFIG_NEW = '[providers.other]\nkind = "echo"\n'


@dataclass
class Site:
    """A config file, a state dir and two extra paths inside a test's tmp_path."""

    root: Path
    config: Path
    state: Path
    folder: Path  # an extra folder
    file: Path  # an extra single file

    @property
    def dest(self) -> Path:
        return backup.backup_dir(self.state)

    @property
    def incoming(self) -> Path:
        """Where the tests put archives they build by hand."""
        return self.root / "incoming"

    @property
    def extras(self) -> list[Path]:
        return [self.folder, self.file]

    def create(self, **kw: Any) -> BackupInfo:
        args: dict[str, Any] = {
            "dest": self.dest,
            "config_path": self.config,
            "state_dir": self.state,
            "extra_paths": self.extras,
            "now": NOW,
        }
        return create_backup(**{**args, **kw})

    def verify(self, archive: Path, **kw: Any) -> backup.RestorePlan:
        args: dict[str, Any] = {
            "config_path": self.config,
            "state_dir": self.state,
            "extra_paths": self.extras,
            "staging_parent": self.state,
        }
        return verify(archive, **{**args, **kw})

    def snapshot(self) -> dict[str, bytes | str]:
        """Every file and link under the roots (the backups themselves aside)."""
        seen: dict[str, bytes | str] = {}
        for path in sorted(self.root.rglob("*")):
            if any(d == path or d in path.parents for d in (self.dest, self.incoming)):
                continue
            if any(part.startswith(".restore-") for part in path.parts):
                continue  # staging: checked by staging_left()
            if path.is_symlink():
                seen[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                seen[str(path)] = path.read_bytes()
            else:
                seen[str(path)] = "dir"
        return seen

    def staging_left(self) -> list[str]:
        return [p.name for p in self.state.iterdir() if p.name.startswith(".restore-")]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = Site(
        root=tmp_path,
        config=tmp_path / "etc" / "helixd.toml",
        state=tmp_path / "state",
        folder=tmp_path / "extra" / "modelfiles",
        file=tmp_path / "extra" / "Modelfile.coder",
    )
    s.config.parent.mkdir()
    s.config.write_text(CONFIG)
    s.state.mkdir()
    (s.state / "residency.json").write_text('{"pins": {"a": true}, "measured": {}}\n')
    (s.state / "operator-stops.json").write_text("{}")  # not worth restoring
    (s.folder / "sub" / "deeper").mkdir(parents=True)
    (s.folder / "a.txt").write_text("alpha")
    (s.folder / "sub" / "b.txt").write_text("beta")
    (s.folder / "sub" / "deeper" / "c.bin").write_bytes(bytes(range(256)) * 10)
    (s.folder / "run.sh").write_text("#!/bin/sh\n")
    (s.folder / "run.sh").chmod(0o755)
    s.file.write_text("FROM qwen\n")
    return s


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- create, list, find ---------------------------------------------------------------


def test_round_trip_restores_the_old_bytes_and_keeps_newer_files(site: Site) -> None:
    outside = site.root / "outside"
    outside.mkdir()
    (site.folder / "link").symlink_to(outside)
    before = site.snapshot()
    info = site.create()
    assert info.id == "helixd-20261124T030000Z" and info.label == ""
    assert info.created == NOW and info.size == info.path.stat().st_size
    assert any("symlink" in n and "link" in n for n in info.notes)
    assert list_backups(site.dest) == [info]
    assert _mode(info.path) == 0o600 and _mode(site.dest) == 0o700
    with tarfile.open(info.path, "r:gz") as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert all(m.uid == 0 and m.uname == "" for m in tar.getmembers())
    assert names[0] == "manifest.json"
    assert "state/operator-stops.json" not in names and "extra-0/link" not in names
    assert manifest["roots"] == {
        "config": str(site.config),
        "state": str(site.state),
        "extra-0": str(site.folder),
        "extra-1": str(site.file),
    }
    assert manifest["files"] == len(names) - 1 == 7

    site.config.write_text(CONFIG_NEW)
    (site.state / "residency.json").write_text("{}")
    (site.folder / "a.txt").write_text("changed")
    (site.folder / "a.txt").chmod(0o640)
    (site.folder / "sub" / "deeper" / "c.bin").unlink()
    (site.folder / "sub" / "deeper").rmdir()
    (site.folder / "new.txt").write_text("added after the backup")
    site.file.write_text("FROM llama\n")

    plan = site.verify(info.path)
    assert plan.files[-1].target == site.config  # the config switches last
    assert f"{site.folder}: 4 files" in plan.describe()
    assert plan.as_json()["skipped"] == []
    written = apply_restore(plan)
    assert written == [
        site.state / "residency.json",
        site.folder / "a.txt",
        site.folder / "run.sh",
        site.folder / "sub" / "b.txt",
        site.folder / "sub" / "deeper" / "c.bin",
        site.file,
        site.config,
    ]
    after = site.snapshot()
    assert after.pop(str(site.folder / "new.txt")) == b"added after the backup"
    assert after == before
    assert _mode(site.folder / "a.txt") == 0o640  # an existing file keeps its mode
    assert _mode(site.folder / "sub" / "deeper" / "c.bin") == 0o600
    assert _mode(site.folder / "sub" / "deeper") == 0o700
    assert site.staging_left() == []


def test_relative_extra_paths_are_read_from_the_config_folder(site: Site) -> None:
    info = site.create(extra_paths=[Path("../extra/Modelfile.coder")])
    with tarfile.open(info.path, "r:gz") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["roots"]["extra-0"] == str(site.file)
    plan = site.verify(info.path, extra_paths=[Path("../extra/Modelfile.coder")])
    assert [f.target for f in plan.files][:-1] == [site.state / "residency.json", site.file]
    plan.discard()


def test_backups_in_the_same_second_get_distinct_names(site: Site) -> None:
    first = site.create()
    second = site.create()
    third = site.create(label="manual")
    assert [first.id, second.id, third.id] == [
        "helixd-20261124T030000Z",
        "helixd-20261124T030000Z-2",
        "helixd-20261124T030000Z-3-manual",
    ]
    assert [b.id for b in list_backups(site.dest)] == [third.id, second.id, first.id]
    assert third.label == "manual" and third.as_json()["created"] == "2026-11-24T03:00:00Z"


def test_a_bad_label_is_refused(site: Site) -> None:
    with pytest.raises(BackupError, match=re.escape("label '../x'")):
        site.create(label="../x")


def test_list_ignores_temp_and_foreign_files(site: Site) -> None:
    info = site.create()
    d = site.dest
    (d / f".{info.id}.tar.gz.abc123.tmp").write_bytes(b"partial")
    (d / "notes.txt").write_text("mine")
    (d / "helixd-20261399T000000Z.tar.gz").write_bytes(b"")  # no such month
    (d / "helixd-latest.tar.gz").write_bytes(b"")
    (d / "helixd-20261124T040000Z.tar.gz").mkdir()
    (d / "helixd-20261124T050000Z.tar.gz").symlink_to(info.path)
    assert [b.id for b in list_backups(d)] == [info.id]
    assert list_backups(site.root / "nowhere") == []


def test_find_backup(site: Site) -> None:
    info = site.create()
    assert find_backup(site.dest, info.id).path == info.path
    assert find_backup(site.dest, info.id + ".tar.gz").path == info.path
    for bad in ("../x", "helixd-20261124T030000Z/..", "helixd-20991124T030000Z"):
        with pytest.raises(BackupError) as err:
            find_backup(site.dest, bad)
        assert str(err.value) == f"no backup named {bad!r}; helixctl backup list shows them"


def test_a_missing_extra_path_fails_the_backup(site: Site) -> None:
    gone = site.root / "extra" / "gone"
    with pytest.raises(BackupError, match=r"gone does not exist; fix \[jobs.backup\] paths"):
        site.create(extra_paths=[site.file, gone])
    assert not site.dest.exists()


def test_create_is_atomic(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.create()  # an older backup that must survive
    real_addfile = tarfile.TarFile.addfile
    calls = []

    def failing_addfile(self: tarfile.TarFile, *args: Any, **kw: Any) -> None:
        calls.append(1)
        if len(calls) > 1:  # after the manifest
            raise OSError(28, "No space left on device")
        real_addfile(self, *args, **kw)

    monkeypatch.setattr(tarfile.TarFile, "addfile", failing_addfile)
    with pytest.raises(BackupError, match="No space left"):
        site.create(now=NOW + timedelta(hours=1))
    assert sorted(p.name for p in site.dest.iterdir()) == ["helixd-20261124T030000Z.tar.gz"]


def test_the_backup_folder_inside_an_extra_folder_is_left_out(site: Site) -> None:
    site.create(extra_paths=[site.state])
    info = site.create(extra_paths=[site.state], now=NOW + timedelta(days=1))
    with tarfile.open(info.path, "r:gz") as tar:
        assert not any("backups" in n for n in tar.getnames())
    assert any("backup folder itself" in n for n in info.notes)
    plan = site.verify(info.path, extra_paths=[site.state])
    assert [f.target for f in plan.files].count(site.state / "residency.json") == 1
    apply_restore(plan)


# ---- restore: roots and targets -------------------------------------------------------


def test_an_extra_root_no_longer_declared_is_skipped(site: Site) -> None:
    info = site.create()
    (site.folder / "a.txt").write_text("changed")
    site.file.write_text("changed")
    plan = site.verify(info.path, extra_paths=[site.file])
    assert plan.skipped == [
        f"the archive's extra-0 ({site.folder}) is not in [jobs.backup] paths now; "
        "add it back to restore it"
    ]
    assert "skipped" in plan.describe()
    written = apply_restore(plan)
    assert site.file in written and site.file.read_text() == "FROM qwen\n"
    assert (site.folder / "a.txt").read_text() == "changed"


def test_a_config_helixd_cannot_write_is_skipped_with_the_command_to_restore_it(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under systemd /etc is read-only to the service: the rest is restored, not the config."""
    info = site.create()
    site.config.write_text(CONFIG_NEW)
    site.file.write_text("changed")
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m: Path(p) != site.config.parent and real_access(p, m)
    )
    plan = site.verify(info.path)
    assert plan.skipped == [
        f"the config {site.config} is in a folder helixd cannot write (systemd keeps /etc "
        "read-only to the service), so it was not restored; to restore it too, as root: "
        f"tar -xzOf {info.path} config/helixd.toml > {site.config}"
    ]
    assert site.config not in apply_restore(plan)
    assert site.config.read_text() == CONFIG_NEW and site.file.read_text() == "FROM qwen\n"


def test_restoring_over_a_symlink_replaces_the_link_and_says_so(site: Site) -> None:
    info = site.create()
    elsewhere = site.root / "elsewhere.txt"
    elsewhere.write_text("untouched")
    (site.folder / "a.txt").unlink()
    (site.folder / "a.txt").symlink_to(elsewhere)
    plan = site.verify(info.path)
    assert f"{site.folder / 'a.txt'} is a symlink now; the restore replaces the link" in plan.notes
    apply_restore(plan)
    assert not (site.folder / "a.txt").is_symlink()
    assert (site.folder / "a.txt").read_text() == "alpha" and elsewhere.read_text() == "untouched"


def test_a_symlinked_folder_leading_outside_the_root_is_refused(site: Site) -> None:
    info = site.create()
    outside = site.root / "outside"
    outside.mkdir()
    (outside / "b.txt").write_text("not yours")
    for p in (site.folder / "sub").rglob("*"):
        if p.is_file():
            p.unlink()
    (site.folder / "sub" / "deeper").rmdir()
    (site.folder / "sub").rmdir()
    (site.folder / "sub").symlink_to(outside)
    before = site.snapshot()
    with pytest.raises(BackupError, match=r"sub leads outside .* through a symlink"):
        site.verify(info.path)
    assert site.snapshot() == before and site.staging_left() == []


def test_a_folder_where_the_backup_has_a_file_is_refused(site: Site) -> None:
    info = site.create()
    (site.folder / "a.txt").unlink()
    (site.folder / "a.txt").mkdir()
    with pytest.raises(BackupError, match=r"a\.txt is a folder now"):
        site.verify(info.path)
    assert site.staging_left() == []


def test_a_file_where_the_backup_has_a_folder_is_refused(site: Site) -> None:
    info = site.create()
    for p in sorted((site.folder / "sub").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (site.folder / "sub").rmdir()
    (site.folder / "sub").write_text("a file now")
    with pytest.raises(BackupError, match="sub is a file now"):
        site.verify(info.path)


def test_verify_writes_nothing_and_discard_cleans_up(site: Site) -> None:
    info = site.create()
    site.config.write_text(CONFIG_NEW)
    before = site.snapshot()
    plan = site.verify(info.path)
    assert site.snapshot() == before
    assert plan.staging.is_dir() and _mode(plan.staging) == 0o700
    plan.discard()
    assert site.staging_left() == []
    assert plan.as_json()["files"][-1] == str(site.config)


def test_restore_across_filesystems_copies_then_renames(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = site.create()
    site.file.write_text("changed")
    plan = site.verify(info.path)
    real_replace = os.replace

    def cross_device(src: Any, dst: Any) -> None:
        if Path(src).is_relative_to(plan.staging):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", cross_device)
    written = apply_restore(plan)
    assert site.file in written and site.file.read_text() == "FROM qwen\n"
    assert not [p for p in site.root.rglob("*.tmp")]
    assert site.staging_left() == []


def test_a_failed_restore_says_what_was_restored_and_cleans_up(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = site.create()
    plan = site.verify(info.path)
    real_replace = os.replace
    calls: list[Path] = []

    def failing(src: Any, dst: Any) -> None:
        calls.append(Path(dst))
        if len(calls) == 2:
            raise OSError(errno.EROFS, "Read-only file system")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(BackupError) as err:
        apply_restore(plan)
    assert str(err.value) == (
        f"restoring {calls[1]} failed: Read-only file system; "
        f"restored before it: {site.state / 'residency.json'}"
    )
    assert site.staging_left() == []


# ---- hostile archives -----------------------------------------------------------------


Member = tuple[tarfile.TarInfo, bytes | None]


def _file(name: str, data: bytes = b"x", mode: int = 0o600) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _manifest(site: Site, **over: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": 1,
        "helixd": "0.1.0",
        "created": "2026-11-24T03:00:00Z",
        "hostname": "test",
        "roots": {"config": str(site.config), "state": str(site.state)},
        "kinds": {},
    }
    return {**manifest, **over}


def _archive(site: Site, members: list[Member], manifest: dict[str, Any] | None = None) -> Path:
    """A gzip'd tar of a manifest (unless None is wanted: pass {}) and ``members``."""
    if manifest is None:
        manifest = _manifest(site)
    if manifest and "files" not in manifest:
        files = [m for m, _ in members if m.isreg() and m.name != "manifest.json"]
        manifest["files"] = len(files)
    head = [_file("manifest.json", json.dumps(manifest).encode())] if manifest else []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in head + members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return _write(site, buf.getvalue())


def _good(name: str = "config/helixd.toml") -> Member:
    return _file(name, CONFIG.encode())


HOSTILE: dict[str, tuple[Callable[[Site], Path], str]] = {
    "dotdot": (
        lambda s: _archive(s, [_good(), _file("../../etc/passwd")]),
        "member '../../etc/passwd': a '..' component",
    ),
    "absolute": (
        lambda s: _archive(s, [_good(), _file("/abs/path")]),
        "member '/abs/path': an absolute path",
    ),
    "config-dotdot": (
        lambda s: _archive(s, [_file("config/../../x"), _good()]),
        "member 'config/../../x': a '..' component",
    ),
    "backslash": (
        lambda s: _archive(s, [_good(), _file("extra-0\\..\\..\\x")]),
        "a backslash",
    ),
    "empty-component": (
        lambda s: _archive(s, [_good(), _file("state//residency.json")]),
        "an empty or '.' component",
    ),
    "symlink": (
        lambda s: _archive(s, [_good(), _special("state/residency.json", tarfile.SYMTYPE, "/")]),
        "member 'state/residency.json': a symlink",
    ),
    "hardlink": (
        lambda s: _archive(
            s, [_good(), _special("state/residency.json", tarfile.LNKTYPE, "/etc/shadow")]
        ),
        "member 'state/residency.json': a hard link",
    ),
    "char-device": (
        lambda s: _archive(s, [_good(), _special("state/residency.json", tarfile.CHRTYPE)]),
        "member 'state/residency.json': a character device",
    ),
    "fifo": (
        lambda s: _archive(s, [_good(), _special("state/residency.json", tarfile.FIFOTYPE)]),
        "a fifo",
    ),
    "duplicate": (
        lambda s: _archive(
            s, [_good(), _file("state/residency.json"), _file("state/residency.json")]
        ),
        "member 'state/residency.json': a duplicate",
    ),
    "outside-roots": (
        lambda s: _archive(s, [_good(), _file("home/user/.bashrc")]),
        "member 'home/user/.bashrc': outside the archive's roots",
    ),
    "unknown-state": (
        lambda s: _archive(s, [_good(), _file("state/operator-stops.json")]),
        "member 'state/operator-stops.json': unexpected state file",
    ),
    "unlisted-extra": (
        lambda s: _archive(s, [_good(), _file("extra-7/x")]),
        "member 'extra-7/x': manifest.json lists no root extra-7",
    ),
    "file-extra-other-member": (
        lambda s: _archive(
            s,
            [_good(), _file(f"extra-0/{s.file.name}"), _file("extra-0/other")],
            _manifest(s, roots={"extra-0": str(s.file)}, kinds={"extra-0": "file"}),
        ),
        "member 'extra-0/other': extra-0 was the single file",
    ),
    "file-and-folder": (
        lambda s: _archive(
            s,
            [_good(), _file("extra-0/a"), _file("extra-0/a/b")],
            _manifest(s, roots={"extra-0": str(s.folder)}, kinds={"extra-0": "folder"}),
        ),
        "member 'extra-0/a/b': a path that is both a file and a folder",
    ),
    "missing-manifest": (
        lambda s: _archive(s, [_good()], manifest={}),
        "member 'config/helixd.toml': the first member must be manifest.json",
    ),
    "bad-manifest-json": (
        lambda s: _archive(s, [_file("manifest.json", b"{not json"), _good()], manifest={}),
        "member 'manifest.json': not valid JSON",
    ),
    "deep-manifest": (
        lambda s: _archive(s, [_file("manifest.json", b"[" * 100_000), _good()], manifest={}),
        "member 'manifest.json': not valid JSON (nested too deeply)",
    ),
    "wrong-format": (
        lambda s: _archive(s, [_good()], _manifest(s, format=2)),
        "member 'manifest.json': format 2; this helixd reads format 1",
    ),
    "bad-roots": (
        lambda s: _archive(s, [_good()], _manifest(s, roots={"config": 1})),
        "roots is not a table of names to paths",
    ),
    "missing-config": (
        lambda s: _archive(s, [_file("state/residency.json")]),
        "has no config/ member",
    ),
    "two-configs": (
        lambda s: _archive(s, [_good(), _good("config/other.toml")]),
        "member 'config/other.toml': a second file in config/",
    ),
    "invalid-config": (
        lambda s: _archive(s, [_file("config/helixd.toml", b'[providers.x]\nkind = "nope"\n')]),
        "does not validate: helixd.toml: providers.x.kind",
    ),
    "file-count": (
        lambda s: _archive(s, [_good()], _manifest(s, files=3)),
        "incomplete: manifest.json lists 3 files, the archive holds 1",
    ),
    "over-max-bytes": (
        lambda s: _archive(s, [_good(), _file("state/residency.json", b"0" * 5000)]),
        "member 'state/residency.json': the members add up to more than 4096 bytes",
    ),
    "huge-header": (
        lambda s: _huge_pax_header(s),
        "a tar header of 17826304 bytes",
    ),
    "random-bytes": (
        lambda s: _write(s, random.Random(7).randbytes(4096)),
        "is not a readable backup: Not a gzipped file",
    ),
    "empty-file": (
        lambda s: _write(s, b""),
        "is not a readable backup",
    ),
    "truncated-gzip": (
        lambda s: _write(
            s,
            _archive(s, [_good(), _file("state/residency.json", os.urandom(9000))]).read_bytes()[
                :-200
            ],
        ),
        "is not a readable backup",
    ),
}


def _write(site: Site, data: bytes) -> Path:
    site.incoming.mkdir(exist_ok=True)
    path = site.incoming / "hostile.tar.gz"
    path.write_bytes(data)
    return path


def _huge_pax_header(site: Site) -> Path:
    info, data = _good()
    info.pax_headers = {"comment": "x" * (17 * 1024 * 1024)}
    return _archive(site, [(info, data)])


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_touch_nothing(site: Site, case: str) -> None:
    build, expected = HOSTILE[case]
    archive = build(site)
    before = site.snapshot()
    max_bytes = 4096 if case == "over-max-bytes" else MAX_BYTES
    with pytest.raises(BackupError) as err:
        site.verify(archive, max_bytes=max_bytes)
    assert expected in str(err.value)
    assert site.snapshot() == before
    assert site.staging_left() == []


def test_a_tar_cut_short_inside_valid_gzip_is_refused(site: Site) -> None:
    """tarfile ends an archive quietly at a garbage header; the manifest's count catches it."""
    info = site.create()
    raw = gzip.decompress(info.path.read_bytes())
    with tarfile.open(info.path, "r:gz") as tar:
        third = tar.getmembers()[3].offset
    cut = raw[:third] + b"\xff" * 512 + b"\x00" * 1024
    before = site.snapshot()
    with pytest.raises(BackupError, match=r"incomplete: manifest\.json lists 7 files"):
        site.verify(_write(site, gzip.compress(cut)))
    assert site.snapshot() == before and site.staging_left() == []


def test_an_archive_inflating_past_its_cap_is_refused(site: Site) -> None:
    info, data = _good()
    info.pax_headers = {"comment": "x" * 200_000}  # headers count too, not only file data
    with pytest.raises(BackupError, match="inflates to more than 102400 bytes"):
        site.verify(_archive(site, [(info, data)]), max_bytes=4096, max_members=10)
    assert site.staging_left() == []


def test_too_many_members_are_refused(site: Site) -> None:
    members = [_good()] + [_file(f"extra-0/f{i}") for i in range(5)]
    manifest = _manifest(site, roots={"extra-0": str(site.folder)}, kinds={"extra-0": "folder"})
    with pytest.raises(BackupError, match="more than 3 members"):
        site.verify(_archive(site, members, manifest), max_members=3)
    assert site.staging_left() == []


# ---- per-file caps and the write-nothing first pass ------------------------------------

MiB = 1024**2
GiB = 1024**3


def _forbid_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, creating or opening for writing any file or folder fails the test at
    once (an AssertionError, which no refusal path catches): the proof that a check wrote
    nothing, not even its staging folder, and a fast failure where it would have."""
    attempts: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if any(c in mode for c in "wax+"):
            attempts.append(f"open {file} {mode}")
            raise AssertionError(f"wrote {file} during the check")
        return real_open(file, mode, *args, **kw)

    def guarded_os_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            attempts.append(f"os.open {path}")
            raise AssertionError(f"wrote {path} during the check")
        return real_os_open(path, flags, *args, **kw)

    def guarded_mkdir(path: Any, *args: Any, **kw: Any) -> None:
        attempts.append(f"mkdir {path}")
        raise AssertionError(f"created {path} during the check")

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)  # mkdtemp and makedirs go through it
    return attempts


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o600
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def _member_bytes(name: str, data: bytes) -> bytes:
    return _header(name, len(data)) + data + b"\0" * (-len(data) % 512)


def _zeros_gz(n: int) -> bytes:
    """``n`` zero bytes as concatenated gzip members (gzip readers join them), built from
    one compressed MiB repeated: a GiB costs about a MB and no time to make."""
    mib = gzip.compress(b"\0" * MiB, compresslevel=9)
    tail = gzip.compress(b"\0" * (n % MiB)) if n % MiB else b""
    return mib * (n // MiB) + tail


def _with_big_member(
    site: Site, name: str, size: int, manifest: dict[str, Any] | None = None, as_: str = ""
) -> Path:
    """manifest.json, the config (unless ``name`` is the config), then ``name`` holding
    ``size`` zeros: a whole, valid archive (every byte of the member is there), cheap to
    build whatever ``size``; in ``incoming/as_`` when given."""
    manifest = manifest or _manifest(site)
    config = (
        b"" if name.startswith("config/") else _member_bytes("config/helixd.toml", CONFIG.encode())
    )
    manifest["files"] = 2 if config else 1
    head = _member_bytes("manifest.json", json.dumps(manifest).encode()) + config
    head += _header(name, size)
    padding_and_end = b"\0" * (-size % 512) + b"\0" * 1024
    path = _write(site, gzip.compress(head) + _zeros_gz(size) + gzip.compress(padding_and_end))
    return path.rename(path.with_name(as_)) if as_ else path


def test_a_gigabyte_state_file_in_a_megabyte_archive_is_refused_before_anything_is_written(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's archive: 1 MB on disk, a 1 GiB state/residency.json inside (it used to be
    staged, restored, then read whole by helixd)."""
    archive = _with_big_member(site, "state/residency.json", GiB)
    assert archive.stat().st_size < 2 * MiB
    before = site.snapshot()
    attempts = _forbid_writes(monkeypatch)
    with pytest.raises(BackupError) as err:
        site.verify(archive)
    assert attempts == []
    assert str(err.value) == (
        f"{archive}: member 'state/residency.json': 1073741824 bytes (1.0 GiB), over the "
        f"{MAX_STATE_BYTES} bytes (4.0 MiB) cap on a state file; nothing was restored; "
        "pick another backup from 'helixctl backup list'"
    )
    monkeypatch.undo()
    assert site.snapshot() == before and site.staging_left() == []


def test_each_kind_of_member_has_its_own_cap(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    over_config = _with_big_member(
        site, "config/helixd.toml", MAX_CONFIG_BYTES + 1, as_="config.tar.gz"
    )
    folder = _manifest(site, roots={"extra-0": str(site.folder)}, kinds={"extra-0": "folder"})
    over_extra = _with_big_member(
        site, "extra-0/big.bin", MAX_EXTRA_FILE_BYTES + 1, folder, as_="extra.tar.gz"
    )
    at_cap = _with_big_member(site, "state/residency.json", MAX_STATE_BYTES, as_="cap.tar.gz")
    before = site.snapshot()
    attempts = _forbid_writes(monkeypatch)
    with pytest.raises(BackupError) as err:
        site.verify(over_config)
    assert (
        "member 'config/helixd.toml': 4194305 bytes (4.0 MiB), over the 4194304 bytes "
        "(4.0 MiB) cap on the config file; nothing was restored"
    ) in str(err.value)
    with pytest.raises(BackupError) as err:
        site.verify(over_extra)
    assert (
        "member 'extra-0/big.bin': 1073741825 bytes (1.0 GiB), over the 1073741824 bytes "
        "(1.0 GiB) cap on one file of [jobs.backup] paths; nothing was restored"
    ) in str(err.value)
    assert attempts == []
    monkeypatch.undo()
    plan = site.verify(at_cap)  # the cap itself is allowed
    assert [f.target for f in plan.files] == [site.state / "residency.json", site.config]
    plan.discard()
    assert site.snapshot() == before and site.staging_left() == []


def _tiny_members(prefix: str, count: int) -> Iterator[bytes]:
    """``count`` one-byte members ``<prefix>000000``…: one header made by tarfile, then
    only its name digits and checksum change (tarfile's tobuf per member is slow)."""
    first = bytearray(_member_bytes(f"{prefix}{0:06d}", b"x"))
    at = len(prefix)
    first[148:156] = b" " * 8  # the checksum counts its own field as spaces
    base = sum(first[:512]) - sum(first[at : at + 6])
    for i in range(count):
        digits = b"%06d" % i
        first[at : at + 6] = digits
        first[148:156] = b"%06o\0 " % (base + sum(digits))
        yield bytes(first)


def test_a_hundred_thousand_and_one_tiny_members_are_refused_before_anything_is_staged(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's other archive: 100,001 members, every one of them fine but the count.
    The member cap is met in the pass that writes nothing (it used to be met after
    staging and fsyncing 100,000 files)."""
    tiny = MAX_MEMBERS - 1  # with manifest.json and the config: MAX_MEMBERS + 1 members
    manifest = _manifest(
        site, roots={"extra-0": str(site.folder)}, kinds={"extra-0": "folder"}, files=tiny + 1
    )
    tar = bytearray(_member_bytes("manifest.json", json.dumps(manifest).encode()))
    tar += _member_bytes("config/helixd.toml", CONFIG.encode())
    tar += b"".join(_tiny_members("extra-0/f", tiny)) + b"\0" * 1024
    archive = _write(site, gzip.compress(bytes(tar), compresslevel=1))
    before = site.snapshot()
    attempts = _forbid_writes(monkeypatch)
    with pytest.raises(BackupError) as err:
        site.verify(archive)
    assert attempts == []
    assert str(err.value) == (
        f"{archive} has more than {MAX_MEMBERS} members; refused; nothing was restored; "
        "pick another backup from 'helixctl backup list'"
    )
    monkeypatch.undo()
    assert site.snapshot() == before and site.staging_left() == []


def test_an_archive_changed_between_the_passes_is_refused(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second pass stages only what the first one checked, where it checked it."""
    swapped = _archive(site, [_good(), _file("state/residency.json", b'{"pins": {}}')])
    swapped_bytes = swapped.read_bytes()
    checked = _archive(site, [_good(), _file("state/residency.json", b"{}")])  # same path
    real_scan = archive_module._ArchiveCheck.scan

    def scan_then_swap(self: Any, raw: Any) -> None:
        real_scan(self, raw)
        with open(self.archive, "r+b") as out:  # the same file, rewritten in place
            out.write(swapped_bytes)
            out.truncate()

    monkeypatch.setattr(archive_module._ArchiveCheck, "scan", scan_then_swap)
    before = site.snapshot()
    with pytest.raises(BackupError, match="changed while it was being checked"):
        site.verify(checked)
    assert site.snapshot() == before and site.staging_left() == []


def test_a_backup_leaves_out_an_oversized_state_file_and_refuses_an_oversized_extra(
    site: Site,
) -> None:
    """create_backup never makes an archive its own restore would refuse."""
    residency = site.state / "residency.json"
    os.truncate(residency, MAX_STATE_BYTES + 1)  # sparse: no disk, nothing to read
    info = site.create()
    assert any(
        n.startswith(f"skipped {residency}: 4194305 bytes (4.0 MiB), over the ")
        and "cap on a state file (helixd does not read it either)" in n
        for n in info.notes
    )
    with tarfile.open(info.path, "r:gz") as tar:
        assert "state/residency.json" not in tar.getnames()
    apply_restore(site.verify(info.path))

    big = site.folder / "model.gguf"
    big.touch()
    os.truncate(big, MAX_EXTRA_FILE_BYTES + 1)
    with pytest.raises(BackupError) as err:
        site.create(now=NOW + timedelta(days=1))
    assert str(err.value) == (
        f"{big} is 1073741825 bytes (1.0 GiB), over the 1073741824 bytes (1.0 GiB) cap on "
        "one file of [jobs.backup] paths; [jobs.backup] paths is for config-sized files, "
        "not models: remove it from paths"
    )
    assert [b.id for b in list_backups(site.dest)] == [info.id]


# ---- retention ------------------------------------------------------------------------


def _info(created: datetime, seq: int = 1, label: str = "") -> BackupInfo:
    stamp = created.strftime("%Y%m%dT%H%M%SZ")
    ident = f"helixd-{stamp}" + (f"-{seq}" if seq > 1 else "") + (f"-{label}" if label else "")
    return BackupInfo(ident, Path(ident + ".tar.gz"), created, 1, label, seq)


def _month() -> list[BackupInfo]:
    """November 2026, three backups a day (01:00, 09:00, 17:00)."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return [_info(start + timedelta(days=d, hours=h)) for d in range(30) for h in (1, 9, 17)]


def _kept(backups: list[BackupInfo], daily: int, weekly: int) -> list[str]:
    deleted = {b.id for b in plan_retention(backups, daily, weekly)}
    return sorted((b.id for b in backups if b.id not in deleted), reverse=True)


def _at17(*days: int) -> list[str]:
    return [f"helixd-202611{d:02d}T170000Z" for d in sorted(days, reverse=True)]


def test_retention_keep_daily() -> None:
    assert _kept(_month(), 7, 0) == _at17(30, 29, 28, 27, 26, 25, 24)
    assert len(plan_retention(_month(), 7, 0)) == 83


def test_retention_keep_weekly() -> None:
    # ISO weeks: 30 Nov is a Monday (week 49); the weeks before end on Sundays 29, 22, 15.
    assert _kept(_month(), 0, 4) == _at17(30, 29, 22, 15)
    # More weeks asked for than there are: the newest of each of the six (1 Nov: week 44).
    assert _kept(_month(), 0, 10) == _at17(30, 29, 22, 15, 8, 1)


def test_retention_daily_and_weekly_together() -> None:
    assert _kept(_month(), 7, 4) == _at17(30, 29, 28, 27, 26, 25, 24, 22, 15)
    assert _kept(_month(), 1, 1) == _at17(30)


def test_retention_always_keeps_the_newest_and_ignores_labels() -> None:
    backups = _month()
    newest = _info(datetime(2026, 11, 30, 17, 0, tzinfo=UTC), seq=2, label="pre-restore")
    assert _kept([*backups, newest], 0, 0) == [newest.id]
    assert _kept([*backups, newest], 2, 0) == [newest.id, "helixd-20261129T170000Z"]
    assert plan_retention([], 7, 4) == []


def test_prune_deletes_what_retention_chose(site: Site) -> None:
    for d in range(4):
        site.create(now=NOW + timedelta(days=d))
        site.create(now=NOW + timedelta(days=d, hours=1))
    deleted = prune(site.dest, 2, 0)
    assert len(deleted) == 6 and not any(b.path.exists() for b in deleted)
    assert [b.id for b in list_backups(site.dest)] == [
        "helixd-20261127T040000Z",
        "helixd-20261126T040000Z",
    ]


_moments = st.lists(
    st.tuples(st.integers(0, 120 * 86400), st.integers(1, 3)),
    max_size=60,
    unique=True,
)


@settings(max_examples=200, deadline=None)
@given(_moments, st.integers(0, 12), st.integers(0, 6))
def test_retention_properties(moments: list[tuple[int, int]], daily: int, weekly: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    backups = [_info(start + timedelta(seconds=s), seq=q) for s, q in moments]
    deleted = plan_retention(backups, daily, weekly)
    deleted_ids = {b.id for b in deleted}
    kept = [b for b in backups if b.id not in deleted_ids]
    assert len(deleted_ids) == len(deleted)
    assert {b.id for b in kept} | deleted_ids == {b.id for b in backups}
    if not backups:
        return
    newest = max(backups, key=lambda b: (b.created, b.seq))
    assert newest in kept
    assert len(kept) <= max(daily + weekly, 1)

    def newest_of(key: Callable[[BackupInfo], object], b: BackupInfo) -> bool:
        peers = [p for p in backups if key(p) == key(b)]
        return b == max(peers, key=lambda p: (p.created, p.seq))

    for b in kept:
        assert newest_of(lambda p: p.created.date(), b) or newest_of(
            lambda p: p.created.isocalendar()[:2], b
        )
    days = sorted({b.created.date() for b in backups}, reverse=True)
    assert {b.created.date() for b in kept} >= set(days[:daily])
