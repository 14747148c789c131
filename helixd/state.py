"""Persisted runtime state: small JSON files in the state dir, always written atomically.

Atomic means: write a temporary file in the same directory, fsync it, rename it over the
old one, fsync the directory. A crash at any point leaves either the old or the new file,
never a torn one.

Reading is bounded: a state file is never bigger than :data:`MAX_STATE_BYTES` when helixd
wrote it, so a bigger one is damage or something foreign and is not read at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("helixd.state")

# The most a state file may hold. What helixd writes is a few KiB (pins and measured
# sizes, 20 runs per job, the alert book): far below. JSON of this size still parses into
# at most some tens of MiB of objects; a restore refuses a state/ member above it too.
MAX_STATE_BYTES = 4 * 1024**2


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
        lost = "providers stopped with 'helixctl stop' follow autostart again"
        record = read_json(self.path, {}, lost=lost)
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
        lost = "runtime pins and measured model sizes start over"
        record = read_json(self.path, {}, lost=lost)
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


def read_json(
    path: Path,
    default: Any,
    *,
    lost: str = "helixd starts without what it held",
    max_bytes: int = MAX_STATE_BYTES,
) -> Any:
    """Read a JSON state file; a missing, unreadable, corrupt or oversized one yields
    ``default``, with a warning that names the file, what was wrong, what became of the
    file and ``lost`` (what that costs, from the caller).

    State is a cache of what helixd learned, never the only copy of user data, so a bad
    file is replaced rather than fatal. A corrupt one is kept aside as ``NAME.corrupt``
    (one per state file, replacing an older one: the set stays bounded) for a look. One
    over ``max_bytes`` is not read and not kept: it is deleted, since a copy would keep
    its size on disk, and helixd never writes one that big.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return default
    except OSError as exc:
        return _set_aside(path, default, exc.strerror or str(exc), lost)
    with os.fdopen(fd, "rb") as src:
        try:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode):
                return _set_aside(path, default, "not a regular file", lost)
            if st.st_size > max_bytes:
                return _delete_oversized(path, default, st.st_size, max_bytes, lost)
            raw = src.read(max_bytes + 1)  # it may have grown since the fstat
            if len(raw) > max_bytes:
                size = max(len(raw), os.fstat(src.fileno()).st_size)
                return _delete_oversized(path, default, size, max_bytes, lost)
        except OSError as exc:
            return _set_aside(path, default, exc.strerror or str(exc), lost)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else f"not JSON: {exc}"
        return _set_aside(path, default, reason, lost)


def _set_aside(path: Path, default: Any, reason: str, lost: str) -> Any:
    """Move a small unreadable state file to ``NAME.corrupt``, say so, yield ``default``."""
    broken = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, broken)
        done = f"kept it aside as {broken.name}"
    except OSError as exc:
        done = f"could not move it aside ({exc.strerror}); the next save replaces it"
    log.warning("%s was unreadable (%s); %s; %s", path, reason, done, lost)
    return default


def _delete_oversized(path: Path, default: Any, size: int, cap: int, lost: str) -> Any:
    """Delete a state file over the cap, unread, say so, yield ``default``."""
    try:
        os.unlink(path)
        done = "deleted it unread"
    except FileNotFoundError:
        done = "it is gone already"
    except OSError as exc:
        done = f"left it unread (cannot delete it: {exc.strerror}); the next save replaces it"
    log.warning(
        "%s is %s, over the %s cap on a helixd state file (helixd writes far smaller "
        "ones: it is damaged or not helixd's); %s; %s",
        path,
        size_text(size),
        size_text(cap),
        done,
        lost,
    )
    return default


def size_text(n: int) -> str:
    """``1073741824 bytes (1.0 GiB)``: exact, and readable at a glance."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n} bytes ({n / scale:.1f} {unit})"
    return f"{n} bytes"
