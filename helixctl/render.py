"""Human output: aligned tables and short durations."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def duration(seconds: float | None) -> str:
    """``42s``, ``3m12s``, ``5h03m``, ``2d04h``; ``-`` for none."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells
    )


def provider_rows(providers: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per provider for ``helixctl status``."""
    rows = []
    now = time.time()
    for p in providers:
        note = p.get("message") or ""
        rows.append(
            [
                p["name"],
                p["kind"],
                p["state"],
                p.get("pid"),
                p.get("port"),
                p.get("restarts", 0),
                duration(p.get("uptime_s"))
                if p.get("uptime_s") is not None
                else f"({duration(now - p['since'])} {p['state']})",
                note,
            ]
        )
    return rows


PROVIDER_HEADERS = ("PROVIDER", "KIND", "STATE", "PID", "PORT", "RESTARTS", "UPTIME", "NOTE")
