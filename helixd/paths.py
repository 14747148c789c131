"""Standard locations of helixd's files in system mode (systemd) and user mode (no root).

helixctl keeps its own copy of the socket lookup (it must not import helixd); the two are
kept equal by a unit test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Mode = Literal["system", "user"]


@dataclass(frozen=True)
class DefaultPaths:
    """Where things go when the config does not say."""

    config: Path
    socket: Path
    socket_group: str | None
    state_dir: Path
    log_dir: Path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    # The XDG spec says relative values are invalid and must be ignored.
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def user_runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR``, or a private per-uid folder in /tmp where no login manager set it."""
    value = os.environ.get("XDG_RUNTIME_DIR")
    if value and os.path.isabs(value):
        return Path(value)
    return Path(f"/tmp/helixd-{os.getuid()}")


def default_paths(mode: Mode) -> DefaultPaths:
    """The table in DESIGN.md, 'Files'."""
    if mode == "system":
        return DefaultPaths(
            config=Path("/etc/helixd/helixd.toml"),
            socket=Path("/run/helixd/helixd.sock"),
            socket_group="helixd",
            state_dir=Path("/var/lib/helixd"),
            log_dir=Path("/var/log/helixd"),
        )
    state = _xdg("XDG_STATE_HOME", ".local/state") / "helixd"
    return DefaultPaths(
        config=_xdg("XDG_CONFIG_HOME", ".config") / "helixd" / "helixd.toml",
        socket=user_runtime_dir() / "helixd" / "helixd.sock",
        socket_group=None,
        state_dir=state,
        log_dir=state / "logs",
    )


def parse_mode(value: str | None) -> Mode:
    """``"system"``/``"user"`` as given (e.g. by a CLI flag), else :func:`default_mode`."""
    if value == "system":
        return "system"
    if value == "user":
        return "user"
    return default_mode()


def default_mode() -> Mode:
    """Root runs the system instance unless told otherwise; anyone else a user instance."""
    return "system" if os.geteuid() == 0 else "user"
