"""BackupOps, the daemon's side of backups: what a user reads when the disk or a restore
fails, and that a failed backup job says why (not "internal error")."""

from __future__ import annotations

import errno
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from helixd.config import LoadedConfig, load_config
from helixd.jobs import backup
from helixd.jobs.alerts import AlertBook
from helixd.jobs.backup_ops import BackupOps, RestoreFailed
from helixd.jobs.history import JobHistory
from helixd.jobs.runner import JobRunner
from helixd.state import MAX_STATE_BYTES
from tests.conftest import test_paths as daemon_paths


class Ctx:
    """The parts of a daemon BackupOps uses: paths, the config, reload."""

    def __init__(self, tmp_path: Path, extra: str = "") -> None:
        config = tmp_path / "helixd.toml"
        config.write_text(f'[jobs.backup]\nkind = "backup"\ncron = "0 3 * * *"\n{extra}')
        self.paths = daemon_paths(tmp_path)
        self.loaded: LoadedConfig = load_config(config)
        self.alerts = AlertBook(None)
        self.reloads = 0

    async def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return {"reloaded": True}


def ops_for(ctx: Ctx) -> BackupOps:
    return BackupOps(ctx, on_state_restored=lambda: None)  # type: ignore[arg-type]


async def test_a_full_disk_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = ops_for(Ctx(tmp_path))

    def full(**_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(ops.folder / ".x.tmp"))

    monkeypatch.setattr(backup, "create_backup", full)
    with pytest.raises(backup.BackupError) as caught:
        await ops.create()
    assert str(caught.value) == (
        f"{ops.folder / '.x.tmp'}: the disk is full (No space left on device); "
        "free space, then run it again"
    )


async def test_a_failing_backup_job_says_why_not_internal_error(tmp_path: Path) -> None:
    ctx = Ctx(tmp_path, extra=f'paths = ["{tmp_path / "gone"}"]\n')
    ops = ops_for(ctx)
    from helixd.jobs.backup_ops import run_backup

    async def job(c: Any, j: Any) -> Any:
        return await run_backup(c, j, ops)

    runner = JobRunner(ctx, JobHistory(None), {"backup": job})  # type: ignore[arg-type]
    runner.configure(ctx.loaded.config.all_jobs)
    run = await runner.run("backup")
    assert run.result == "failed"
    assert "internal error" not in run.message and str(tmp_path / "gone") in run.message
    (alert,) = ctx.alerts.active()
    assert alert.key == "job_failed:backup" and str(tmp_path / "gone") in alert.message


async def test_a_restore_that_stops_part_way_names_the_safety_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = Ctx(tmp_path)
    ops = ops_for(ctx)
    taken = await ops.create()

    def half(plan: Any) -> list[Path]:
        plan.discard()
        raise backup.BackupError("restoring /x failed: Input/output error; restored before it: /y")

    monkeypatch.setattr(backup, "apply_restore", half)
    with pytest.raises(RestoreFailed) as caught:
        await ops.restore(taken.id)
    safety = next(b for b in backup.list_backups(ops.folder) if b.label == "pre-restore")
    assert str(caught.value).startswith(f"restoring {taken.id} stopped part way: restoring /x")
    assert f"helixctl backup restore {safety.id}" in str(caught.value)
    assert ctx.reloads == 0


async def test_a_restore_refused_for_an_oversized_state_file_changes_nothing(
    tmp_path: Path,
) -> None:
    """Refused before anything is written: no staging folder, no safety backup, no reload,
    the state file as it was."""
    ctx = Ctx(tmp_path)
    ops = ops_for(ctx)
    state = ctx.paths.state_dir
    state.mkdir(parents=True)
    (state / "residency.json").write_text('{"pins": {"a": true}}\n')
    manifest = {
        "format": 1,
        "helixd": "0.1.0",
        "created": "2026-11-24T03:00:00Z",
        "hostname": "test",
        "roots": {"config": str(ctx.loaded.path), "state": str(state)},
        "kinds": {},
        "files": 2,
    }
    members = [
        ("manifest.json", json.dumps(manifest).encode()),
        (f"config/{ctx.loaded.path.name}", ctx.loaded.path.read_bytes()),
        ("state/residency.json", b"\0" * (MAX_STATE_BYTES + 1)),
    ]
    ops.folder.mkdir(mode=0o700)
    archive = ops.folder / "helixd-20261124T030000Z.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(backup.BackupError) as caught:
        await ops.restore("helixd-20261124T030000Z")
    assert (
        "member 'state/residency.json': 4194305 bytes (4.0 MiB), over the 4194304 bytes "
        "(4.0 MiB) cap on a state file; nothing was restored"
    ) in str(caught.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert [p.name for p in state.iterdir() if p.name.startswith(".restore-")] == []
    assert [b.id for b in backup.list_backups(ops.folder)] == ["helixd-20261124T030000Z"]
    assert ctx.reloads == 0
