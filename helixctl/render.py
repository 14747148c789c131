"""Human output: aligned tables and short durations."""

from __future__ import annotations

import time

# typing.TYPE_CHECKING without importing typing, which costs ``helixctl status`` some
# 3 ms of its start-up (the idiom PEP 781 names; mypy reads it the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
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


def size(n: int | None) -> str:
    """``19.4G`` / ``512M``: memory as people read it from nvidia-smi."""
    if n is None:
        return "-"
    if n >= 1024**3:
        return f"{n / 1024**3:.1f}G"
    return f"{n / 1024**2:.0f}M"


def device_lines(devices: dict[str, Any]) -> list[str]:
    """Per GPU: used, free and helixd's budget; host RAM; or why there is no GPU."""
    lines = []
    if devices.get("mode") == "ram-only":
        lines.append(f"GPUs: none in use ({devices.get('note') or 'RAM-only mode'})")
    elif devices.get("note"):
        lines.append(f"GPUs: {devices['note']}")
    for g in devices.get("gpus", []):
        lines.append(
            f"{g['id'].upper()} {g['name']}: {size(g['used_bytes'])} used, "
            f"{size(g['free_bytes'])} free of {size(g['total_bytes'])}; "
            f"budget {size(g['budget_bytes'])} (reserve {size(g['reserve_bytes'])})"
        )
    ram = devices.get("ram")
    if ram:
        lines.append(
            f"RAM: {size(ram['available_bytes'])} available of {size(ram['total_bytes'])}; "
            f"budget {size(ram['budget_bytes'])} (reserve {size(ram['reserve_bytes'])})"
        )
    return lines


MODEL_HEADERS = (
    "MODEL",
    "PROVIDER",
    "STATE",
    "DEVICE",
    "VRAM",
    "RAM",
    "SIZE FROM",
    "PINNED",
    "LAST USED",
    "IN FLIGHT",
    "QUEUED",
    "NOTE",
)


def model_rows(models: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per model for ``helixctl models`` and ``status``."""
    now = time.time()
    rows = []
    for m in models:
        last = m.get("last_used")
        rows.append(
            [
                m["name"],
                m["provider"],
                m["state"],
                m.get("device"),
                size(m.get("vram_bytes")) if m.get("vram_bytes") else "-",
                size(m.get("ram_bytes")) if m.get("ram_bytes") else "-",
                m.get("memory_source"),
                ("yes" if m.get("pin_source") != "runtime" else "yes (runtime)")
                if m.get("pinned")
                else "no",
                f"{duration(now - last)} ago" if last is not None else "never",
                m.get("in_flight", 0),
                m.get("queued", 0),
                m.get("message") or "",
            ]
        )
    return rows
