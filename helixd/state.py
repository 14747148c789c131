"""Persisted runtime state: small JSON files in the state dir, always written atomically.

Atomic means: write a temporary file in the same directory, fsync it, rename it over the
old one, fsync the directory. A crash at any point leaves either the old or the new file,
never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fchmod(tmp.fileno(), mode)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as pretty JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def boot_id() -> str:
    """The kernel's id of this boot: runtime records from another boot refer to nothing."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


class OperatorStops:
    """Providers an operator stopped with ``helixctl stop``, kept until started again.

    When helixd itself restarts (a crash, the watchdog, an upgrade), such a provider stays
    stopped instead of coming back and taking the GPU the operator freed. A reboot starts
    over from the config's ``autostart``, as systemd does with stopped units.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "operator-stops.json"
        self._boot_id = boot_id()
        record = read_json(self.path, {})
        same_boot = isinstance(record, dict) and record.get("boot_id") == self._boot_id
        names = record.get("stopped", []) if same_boot else []
        self.stopped: set[str] = {n for n in names if isinstance(n, str)}

    def mark(self, name: str, stopped: bool) -> None:
        """Record that ``name`` was stopped (or started) on request; persisted at once."""
        before = set(self.stopped)
        if stopped:
            self.stopped.add(name)
        else:
            self.stopped.discard(name)
        if self.stopped != before:
            self.save()

    def keep_only(self, names: set[str]) -> None:
        """Forget providers that are no longer configured."""
        if self.stopped - names:
            self.stopped &= names
            self.save()

    def save(self) -> None:
        """Write the record atomically."""
        atomic_write_json(self.path, {"boot_id": self._boot_id, "stopped": sorted(self.stopped)})


class ResidencyRecord:
    """What residency learned and was told at run time, kept across restarts.

    ``pins``: runtime pin/unpin of a model (``helixctl pin``), overriding its config.
    ``measured``: memory figures measured after a load, keyed by the model and the
    parameters that shape its size (provider, file, context, layers, arguments).
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "residency.json"
        record = read_json(self.path, {})
        if not isinstance(record, dict):
            record = {}
        pins = record.get("pins", {})
        measured = record.get("measured", {})
        self.pins: dict[str, bool] = {
            k: v for k, v in (pins.items() if isinstance(pins, dict) else ()) if isinstance(v, bool)
        }
        self.measured: dict[str, dict[str, int]] = {
            k: {"vram_bytes": int(v["vram_bytes"]), "ram_bytes": int(v["ram_bytes"])}
            for k, v in (measured.items() if isinstance(measured, dict) else ())
            if isinstance(v, dict)
            and isinstance(v.get("vram_bytes"), int)
            and isinstance(v.get("ram_bytes"), int)
        }

    def set_pin(self, model: str, pinned: bool | None) -> None:
        """Record a runtime pin (``None`` forgets it: the config decides again)."""
        if pinned is None:
            self.pins.pop(model, None)
        else:
            self.pins[model] = pinned
        self.save()

    def remember(self, key: str, vram_bytes: int, ram_bytes: int) -> None:
        """Keep a measured size; written only when it changed."""
        figure = {"vram_bytes": vram_bytes, "ram_bytes": ram_bytes}
        if self.measured.get(key) != figure:
            self.measured[key] = figure
            self.save()

    def save(self) -> None:
        """Write the record atomically."""
        atomic_write_json(self.path, {"pins": self.pins, "measured": self.measured})


def read_json(path: Path, default: Any) -> Any:
    """Read a JSON state file; a missing or unreadable one yields ``default``.

    State is a cache of what helixd learned, never the only copy of user data, so a
    corrupt file is replaced rather than fatal; the caller logs that it happened.
    """
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError):
        broken = path.with_name(path.name + ".corrupt")
        with contextlib.suppress(OSError):
            os.replace(path, broken)
        return default
