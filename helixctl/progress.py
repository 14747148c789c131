"""Ollama's pull progress as one line: status, percent, bar, bytes and rate."""

from __future__ import annotations

import time
from typing import Any

BAR_WIDTH = 24


def human_bytes(count: float) -> str:
    """``1.4 GiB``-style sizes."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class PullProgress:
    """Turns progress objects into lines; measures the rate per digest."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._digest: str | None = None
        self._since = 0.0
        self._start_bytes = 0

    def line(self, update: dict[str, Any]) -> str:
        """The text for one progress object."""
        status = str(update.get("status", ""))
        total, completed = update.get("total"), update.get("completed")
        if not isinstance(total, int) or total <= 0:
            return status
        done = completed if isinstance(completed, int) else 0
        if update.get("digest") != self._digest:
            self._digest, self._since, self._start_bytes = update.get("digest"), self._clock(), done
        share = min(1.0, done / total)
        filled = int(share * BAR_WIDTH)
        bar = "█" * filled + " " * (BAR_WIDTH - filled)
        elapsed = self._clock() - self._since
        rate = (done - self._start_bytes) / elapsed if elapsed > 0 else 0.0
        return (
            f"{status} {share:4.0%} ▕{bar}▏ {human_bytes(done)}/{human_bytes(total)}"
            f"  {human_bytes(rate)}/s"
        )
