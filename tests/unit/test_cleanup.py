"""The cleanup job's file work: what it deletes, what it keeps, the bytes it reports."""

from __future__ import annotations

import os
from pathlib import Path

from helixd.config.jobs import CleanupJob
from helixd.jobs.cleanup import clean

NOW = 1_800_000_000.0
DAY = 86400.0


def put(path: Path, size: int, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def test_cleanup_deletes_only_old_rotated_logs_orphans_and_stale_temp_files(
    tmp_path: Path,
) -> None:
    state, logs = tmp_path / "state", tmp_path / "logs"
    job = CleanupJob(kind="cleanup", cron="30 3 * * *")  # 14 days for logs, 1 h for temp
    gone = [
        put(logs / "ollama.log.1", 100, 15 * DAY),  # rotated, old
        put(logs / "retired.log", 200, 15 * DAY),  # a process no longer configured, old
        put(state / ".residency.json.abc.tmp", 10, 2 * 3600),  # an interrupted write
        put(state / "backups" / ".helixd-x.tar.gz.y.tmp", 20, 2 * 3600),
        put(state / ".restore-abcd" / "config" / "helixd.toml", 30, 2 * 3600),
    ]
    os.utime(state / ".restore-abcd", (NOW - 7200, NOW - 7200))
    kept = [
        put(logs / "ollama.log", 1000, 30 * DAY),  # current log of a configured provider
        put(logs / "llama:qwen.log", 1000, 30 * DAY),  # a configured model's process
        put(logs / "ollama.log.2", 100, 13 * DAY),  # rotated, not old yet
        put(logs / "retired.log.1", 100, 1 * DAY),
        put(state / ".jobs.json.q.tmp", 10, 60),  # a write that may be going on now
        put(state / "residency.json", 10, 30 * DAY),
        put(state / "backups" / "helixd-20260101T000000Z.tar.gz", 10, 300 * DAY),
    ]
    freed = clean(
        state_dir=state,
        log_dir=logs,
        live_logs={"ollama", "llama:qwen"},
        job=job,
        now=lambda: NOW,
    )
    assert sorted(freed.logs) == ["ollama.log.1", "retired.log"]
    assert len(freed.temp) == 3 and freed.bytes == 100 + 200 + 10 + 20 + 30
    assert not any(p.exists() for p in gone) and not (state / ".restore-abcd").exists()
    assert all(p.exists() for p in kept)


def test_cleanup_of_missing_folders_frees_nothing(tmp_path: Path) -> None:
    job = CleanupJob(kind="cleanup", cron="30 3 * * *")
    freed = clean(
        state_dir=tmp_path / "no-state", log_dir=tmp_path / "no-logs", live_logs=(), job=job
    )
    assert (freed.bytes, freed.logs, freed.temp) == (0, [], [])
