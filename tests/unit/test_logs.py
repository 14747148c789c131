"""Log files rotate at their size limit; lines are split and capped sanely."""

from __future__ import annotations

from pathlib import Path

from helixd.supervisor.logs import MAX_LINE_BYTES, LogSink, RotatingFile, split_lines


def test_rotation_keeps_the_configured_number_of_backups(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    sink = LogSink(RotatingFile(path, max_bytes=100, backups=2))
    for index in range(40):
        sink.emit("stdout", f"line {index:02d} " + "x" * 10)
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["p.log", "p.log.1", "p.log.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert path.read_text().splitlines()[-1].startswith("line 39")
    # The ring keeps everything recent regardless of the files.
    assert [line.text[:7] for line in sink.tail(2)] == ["line 38", "line 39"]


def test_zero_backups_truncates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    file = RotatingFile(path, max_bytes=50, backups=0)
    for _ in range(10):
        file.write(b"0123456789\n")
    file.close()
    assert [p.name for p in tmp_path.iterdir()] == ["p.log"]
    assert path.stat().st_size <= 50


def test_split_lines_handles_partial_crlf_and_runaway_lines() -> None:
    buffer = bytearray()
    assert list(split_lines(buffer, b"one\r\ntw")) == ["one"]
    assert list(split_lines(buffer, b"o\n")) == ["two"]
    huge = list(split_lines(buffer, b"y" * (MAX_LINE_BYTES + 10)))
    assert len(huge) == 1 and len(huge[0]) == MAX_LINE_BYTES
    assert list(split_lines(buffer, b"\n")) == ["y" * 10]


def test_stderr_and_helixd_lines_are_tagged_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    sink = LogSink(RotatingFile(path, max_bytes=0, backups=1))
    sink.emit("stdout", "out")
    sink.emit("stderr", "err")
    sink.emit("helixd", "note")
    sink.close()
    assert path.read_text() == "out\n[stderr] err\n[helixd] note\n"


def test_an_unwritable_log_file_warns_once_and_keeps_lines_in_memory(
    tmp_path: Path, caplog: object
) -> None:
    import logging

    import pytest

    assert isinstance(caplog, pytest.LogCaptureFixture)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = LogSink(RotatingFile(blocker / "p.log", max_bytes=0, backups=1))
    with caplog.at_level(logging.WARNING):
        sink.emit("stdout", "one")
        sink.emit("stdout", "two")
    assert [line.text for line in sink.tail(5)] == ["one", "two"]
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1
