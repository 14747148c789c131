"""``ProcessSpec``: everything the supervisor needs to run one process, resolved from config.

Specs are plain frozen data so a reload can compare old and new with ``==``: an unchanged
spec leaves its process alone, a changed one restarts it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from helixd.config import DaemonPaths, ProviderConfig
from helixd.errors import SupervisionError
from helixd.kinds import kind_defaults

LOOPBACK = "127.0.0.1"

# What a child inherits from the daemon's environment; everything else must be declared.
INHERITED_ENV = ("PATH", "HOME", "LANG")


@dataclass(frozen=True)
class HealthProbe:
    """How to tell that a process serves: an HTTP GET on ``path``, a TCP connect, or nothing."""

    kind: str  # "http" | "tcp" | "none"
    path: str | None
    interval_s: float
    timeout_s: float
    failures: int
    # The kind's second guess, probed once ``path`` answers 404 (never for a path the
    # provider set itself: that one is meant).
    fallback_path: str | None = None


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised process, fully resolved (ports allocated, placeholders filled)."""

    name: str
    kind: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: Path | None
    user: str | None
    group: str | None
    host: str
    port: int | None
    autostart: bool
    restart: str
    start_seconds: float
    start_retries: int
    backoff_initial_s: float
    backoff_max_s: float
    backoff_reset_s: float
    stop_signal: signal.Signals
    stop_timeout_s: float
    health: HealthProbe
    log_path: Path
    log_max_bytes: int
    log_backups: int
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # Set when the supervisor gives this process one run, never restarting it nor retrying
    # its start, because someone else decides what follows (a model's process: the
    # scheduler). The text says so in the process's note, instead of quoting a
    # start_retries or restart the provider's config never said.
    one_run: str | None = None


class SpecError(SupervisionError):
    """A provider that cannot be turned into a runnable process (names the key and the fix)."""

    code = "bad_spec"


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now; the kernel picks it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def build_spec(
    name: str,
    provider: ProviderConfig,
    paths: DaemonPaths,
    port: int | None = None,
    *,
    provider_name: str | None = None,
    model_values: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> ProcessSpec:
    """Resolve ``provider`` into a spec. ``port`` keeps an earlier auto port across reloads.

    For one model of a process-per-model provider, ``name`` is the process's name,
    ``provider_name`` the provider's, ``model_values`` fills ``{model_path}`` and the other
    model placeholders, ``extra_args`` are the model's own arguments and ``extra_env``
    what the placement decided (``CUDA_VISIBLE_DEVICES``).
    """
    provider_name = provider_name or name
    defaults = kind_defaults(provider.kind)
    argv_template = provider.command or list(defaults.command or ())
    if not argv_template:
        raise SpecError(
            f"providers.{provider_name}.command: kind '{provider.kind}' needs a command"
        )
    if isinstance(provider.port, int):
        port = provider.port
    elif port is None:
        port = free_port()
    values = {
        "port": str(port),
        "host": LOOPBACK,
        "name": name,
        "state_dir": str(paths.state_dir),
        "log_dir": str(paths.log_dir),
        "python": sys.executable,
        **(model_values or {}),
    }
    key = f"providers.{provider_name}.command"
    argv = tuple(_fill(arg, values, key) for arg in argv_template) + tuple(extra_args)
    env = provider_env(provider, values)
    env.update(extra_env or {})
    return ProcessSpec(
        name=name,
        kind=provider.kind,
        argv=argv,
        env=tuple(sorted(env.items())),
        cwd=provider.cwd,
        user=provider.user,
        group=provider.group,
        host=LOOPBACK,
        port=port,
        autostart=provider.autostart,
        restart=provider.restart,
        start_seconds=(
            defaults.start_seconds
            if defaults.start_seconds is not None
            and "start_seconds" not in provider.model_fields_set
            else provider.start_seconds
        ),
        start_retries=provider.start_retries,
        backoff_initial_s=provider.backoff_initial_s,
        backoff_max_s=provider.backoff_max_s,
        backoff_reset_s=provider.backoff_reset_s,
        stop_signal=signal.Signals[provider.stop_signal],
        stop_timeout_s=provider.stop_timeout_s,
        health=_probe(provider),
        log_path=paths.log_dir / f"{name}.log",
        log_max_bytes=provider.log.max_bytes,
        log_backups=provider.log.backups,
    )


def _probe(provider: ProviderConfig) -> HealthProbe:
    defaults = kind_defaults(provider.kind)
    h = provider.health
    fallback = None
    if not h.enabled:
        kind, path = "none", None
    elif h.path is not None:
        kind, path = "http", h.path
    elif h.tcp:
        kind, path = "tcp", None
    elif defaults.health_path is not None:
        kind, path = "http", defaults.health_path
        fallback = defaults.health_fallback_path
    elif defaults.health_tcp:
        kind, path = "tcp", None
    else:
        kind, path = "none", None
    return HealthProbe(kind, path, h.interval_s, h.timeout_s, h.failures, fallback)


def provider_env(provider: ProviderConfig, values: dict[str, str]) -> dict[str, str]:
    """A provider's environment: the inherited basics, its kind's defaults, its own env,
    with ``{placeholders}`` from ``values`` filled in."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    for key, value in {**kind_defaults(provider.kind).env, **provider.env}.items():
        env[key] = _substitute(value, values)
    return env


def _substitute(value: str, values: dict[str, str]) -> str:
    """Replace known ``{placeholders}`` in an env value; other braces (JSON) stay as written."""
    for key, replacement in values.items():
        value = value.replace("{" + key + "}", replacement)
    return value


def _fill(template: str, values: dict[str, str], key: str) -> str:
    try:
        return template.format_map(values)
    except (KeyError, ValueError, IndexError) as exc:
        raise SpecError(f"{key}: cannot fill {template!r}: {exc}") from None
