"""helixctl pull's progress line."""

from __future__ import annotations

from helixctl.progress import PullProgress, human_bytes


def test_the_progress_line_shows_percent_bytes_and_rate() -> None:
    now = [100.0]
    progress = PullProgress(clock=lambda: now[0])
    total = 4 * 1024**3
    first = {"status": "pulling ab12", "digest": "sha256:ab12", "total": total, "completed": 0}
    assert progress.line(first).startswith("pulling ab12   0% ▕")
    now[0] += 2.0
    half = {**first, "completed": total // 2}
    line = progress.line(half)
    assert " 50% ▕████████████            ▏ 2.0 GiB/4.0 GiB  1.0 GiB/s" in line
    assert progress.line({"status": "verifying sha256 digest"}) == "verifying sha256 digest"


def test_sizes_read_as_people_write_them() -> None:
    assert [human_bytes(n) for n in (512, 2048, 5 * 1024**2, 3 * 1024**3)] == [
        "512 B",
        "2.0 KiB",
        "5.0 MiB",
        "3.0 GiB",
    ]
