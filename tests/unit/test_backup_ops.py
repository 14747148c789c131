"""BackupOps, the daemon's side of backups: what a user reads when the disk or a restore
fails, and that a failed backup job says why (not "internal error")."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from helixd.config import LoadedConfig, load_config
from helixd.jobs import backup
from helixd.jobs.alerts import AlertBook
from helixd.jobs.backup_ops import BackupOps, RestoreFailed
from helixd.jobs.history import JobHistory
from helixd.jobs.runner import JobRunner
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
