"""State files are read within a cap: one over it is deleted unread, with a warning that
names it, its size, the cap and what helixd did; a small corrupt one is kept aside once.

The big files are sparse (``truncate``): no disk is used, and nothing would be read but
zeros if the cap were not honoured."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helixd.jobs.alerts import AlertBook
from helixd.jobs.history import JobHistory
from helixd.state import MAX_STATE_BYTES, OperatorStops, ResidencyRecord, read_json

GiB = 1024**3
CAP_TEXT = f"{MAX_STATE_BYTES} bytes (4.0 MiB)"


def _sparse(path: Path, size: int) -> None:
    path.touch()
    os.truncate(path, size)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("size", "size_text"),
    [
        (MAX_STATE_BYTES + 1, "4194305 bytes (4.0 MiB)"),
        (GiB, "1073741824 bytes (1.0 GiB)"),  # the user's file
    ],
    ids=["cap+1", "1GiB"],
)
def test_an_oversized_residency_json_is_deleted_unread_and_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, size: int, size_text: str
) -> None:
    path = tmp_path / "residency.json"
    _sparse(path, size)
    with caplog.at_level(logging.WARNING):
        record = ResidencyRecord(tmp_path)
    assert record.pins == {} and record.measured == {}
    assert list(tmp_path.iterdir()) == []  # gone, and no copy of it kept as .corrupt
    assert _warnings(caplog) == [
        f"{path} is {size_text}, over the {CAP_TEXT} cap on a helixd state file (helixd "
        "writes far smaller ones: it is damaged or not helixd's); deleted it unread; "
        "runtime pins and measured model sizes start over"
    ]
    record.set_pin("a", True)  # and helixd goes on writing it as usual
    assert ResidencyRecord(tmp_path).pins == {"a": True}


def test_valid_json_over_the_cap_is_not_read(tmp_path: Path) -> None:
    """Not read at all: had it been read whole, its pin would be there."""
    path = tmp_path / "residency.json"
    path.write_text(json.dumps({"pins": {"big": True}, "pad": "x" * MAX_STATE_BYTES}))
    assert ResidencyRecord(tmp_path).pins == {}
    assert not path.exists()


def test_a_file_at_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "residency.json"
    head = '{"pins": {"a": true}, "pad": "'
    path.write_text(head + "x" * (MAX_STATE_BYTES - len(head) - 2) + '"}')
    assert path.stat().st_size == MAX_STATE_BYTES
    assert ResidencyRecord(tmp_path).pins == {"a": True}


Reader = Callable[[Path], Any]
READERS: dict[str, tuple[str, Reader, str]] = {
    "residency": (
        "residency.json",
        lambda d: ResidencyRecord(d),
        "runtime pins and measured model sizes start over",
    ),
    "jobs": ("jobs.json", lambda d: JobHistory(d / "jobs.json"), "the job history starts empty"),
    "alerts": ("alerts.json", lambda d: AlertBook(d / "alerts.json"), "starting with no alerts"),
    "operator-stops": (
        "operator-stops.json",
        lambda d: OperatorStops(d),
        "providers stopped with 'helixctl stop' follow autostart again",
    ),
}


@pytest.mark.parametrize("case", sorted(READERS))
def test_every_state_file_is_read_within_the_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    name, read, lost = READERS[case]
    _sparse(tmp_path / name, GiB)
    with caplog.at_level(logging.WARNING):
        read(tmp_path)
    assert list(tmp_path.iterdir()) == []
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"{tmp_path / name} is 1073741824 bytes (1.0 GiB), over the ")
    assert warning.endswith(f"; deleted it unread; {lost}")


def test_a_small_corrupt_file_is_kept_aside_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Kept for a look, as before; one .corrupt per state file, the latest."""
    path = tmp_path / "jobs.json"
    for text in ("{not json", "[also not"):
        path.write_text(text)
        with caplog.at_level(logging.WARNING):
            assert JobHistory(path).runs == {}
    assert sorted(os.listdir(tmp_path)) == ["jobs.json.corrupt"]
    assert (tmp_path / "jobs.json.corrupt").read_text() == "[also not"
    warnings = _warnings(caplog)
    assert len(warnings) == 2
    for warning in warnings:
        assert warning.startswith(f"{path} was unreadable (not JSON: ")
        assert warning.endswith(
            "; kept it aside as jobs.json.corrupt; the job history starts empty"
        )


def test_json_nested_too_deeply_is_corrupt_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_text("[" * 200_000)  # within the cap, but past the parser's recursion limit
    with caplog.at_level(logging.WARNING):
        assert read_json(path, "default") == "default"
    assert _warnings(caplog) == [
        f"{path} was unreadable (nested too deeply); kept it aside as state.json.corrupt; "
        "helixd starts without what it held"
    ]


def test_a_missing_file_is_the_default_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        assert read_json(tmp_path / "nothing.json", {}) == {}
    assert caplog.records == []
