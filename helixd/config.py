"""Configuration: TOML in, validated pydantic models out.

Every error a user can make is reported as ``FILE: dotted.key: what was expected; got X``
so that the message alone says where to look and what to write instead. The daemon
(`helixd --check-config`) and the CLI (`helixctl config check`) share this one validator.
"""

from __future__ import annotations

import os
import re
import signal
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from helixd.kinds import kind_defaults
from helixd.paths import Mode, default_paths

PROVIDER_KINDS = ("echo", "ollama", "llamacpp", "vllm", "localai", "tabbyapi", "openai", "remote")
ProviderKind = Literal[
    "echo", "ollama", "llamacpp", "vllm", "localai", "tabbyapi", "openai", "remote"
]

# Placeholders a provider-level command may use; model placeholders mark a per-model template.
PROCESS_PLACEHOLDERS = frozenset({"port", "host", "name", "state_dir", "log_dir", "python"})
MODEL_PLACEHOLDERS = frozenset({"model", "model_path", "model_id", "ctx", "gpu_memory_utilization"})

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class ConfigError(Exception):
    """A config that cannot be used; the message names the file, the key and the fix."""


def _parse_duration_s(value: Any) -> Any:
    """Accept ``30``, ``"30s"``, ``"10m"``, ``"1h"``; leave anything else to pydantic."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
        if not match:
            raise ValueError(f"expected a duration such as 30, '30s', '10m' or '1h'; got {value!r}")
        number, unit = float(match.group(1)), match.group(2) or "s"
        return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return value


def _parse_size_bytes(value: Any) -> Any:
    """Accept ``1048576``, ``"10MiB"``, ``"1 GiB"``, ``"500KiB"``."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*", value)
        if not match:
            raise ValueError(f"expected a size such as '10MiB' or a number of bytes; got {value!r}")
        scale = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[match.group(2) or "B"]
        return int(match.group(1)) * scale
    return value


Seconds = Annotated[float, BeforeValidator(_parse_duration_s), Field(gt=0)]
ByteSize = Annotated[int, BeforeValidator(_parse_size_bytes), Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DaemonConfig(_Strict):
    """``[daemon]``: socket, state and log locations; unset paths follow the mode."""

    socket: Path | None = None
    socket_mode: str | None = None
    socket_group: str | None = None
    state_dir: Path | None = None
    log_dir: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("socket_mode")
    @classmethod
    def _octal_mode(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"0?[0-7]{3}", value):
            raise ValueError(f"expected an octal file mode such as '0660'; got {value!r}")
        return value


class HealthConfig(_Strict):
    """How readiness and liveness of a process are probed.

    ``path`` probes HTTP (any 2xx is healthy), ``tcp = true`` only connects; with neither,
    the provider kind's default applies (see ``helixd.kinds``). ``enabled = false`` turns
    probing off: the process counts as ready once it has run for a second.
    """

    enabled: bool = True
    path: str | None = None
    tcp: bool = False
    interval_s: Seconds = 30.0
    timeout_s: Seconds = 5.0
    failures: int = Field(default=3, ge=1)

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"expected an HTTP path starting with '/'; got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_probe(self) -> HealthConfig:
        if self.path is not None and self.tcp:
            raise ValueError("set either path (HTTP probe) or tcp = true, not both")
        return self


class LogConfig(_Strict):
    """Per-process log file rotation."""

    max_bytes: ByteSize = 10 * 1024 * 1024
    backups: int = Field(default=5, ge=0, le=100)


class ProviderConfig(_Strict):
    """``[providers.NAME]``: a kind of inference server and how to run it."""

    kind: ProviderKind
    command: list[str] | None = None
    port: int | Literal["auto"] = "auto"
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None
    group: str | None = None
    autostart: bool = True
    restart: Literal["always", "on-failure", "never"] = "on-failure"
    start_seconds: Seconds = 60.0
    start_retries: int = Field(default=3, ge=0, le=1000)
    backoff_initial_s: Seconds = 1.0
    backoff_max_s: Seconds = 60.0
    backoff_reset_s: Seconds = 60.0
    stop_signal: str = "SIGTERM"
    stop_timeout_s: Annotated[float, BeforeValidator(_parse_duration_s), Field(gt=0, le=120)] = 10.0
    health: HealthConfig = Field(default_factory=HealthConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    url: str | None = None

    @field_validator("command")
    @classmethod
    def _argv(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0].strip()):
            raise ValueError("expected a non-empty list of arguments, e.g. ['ollama', 'serve']")
        return value

    @field_validator("port")
    @classmethod
    def _port_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError(f"expected a TCP port from 1 to 65535 or 'auto'; got {value}")
        return value

    @field_validator("stop_signal")
    @classmethod
    def _signal_name(cls, value: str) -> str:
        name = value.upper() if value.upper().startswith("SIG") else "SIG" + value.upper()
        if name not in signal.Signals.__members__:
            raise ValueError(f"expected a signal name such as SIGTERM or SIGINT; got {value!r}")
        return name

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"expected environment variable names; got {key!r}")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> ProviderConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        return self

    @property
    def placeholders(self) -> set[str]:
        """The ``{names}`` its command uses."""
        found: set[str] = set()
        for arg in self.command or ():
            found.update(_placeholders(arg))
        return found

    @property
    def is_model_template(self) -> bool:
        """True when the command is started once per model rather than once per provider."""
        return bool(self.placeholders & MODEL_PLACEHOLDERS)


def _placeholders(template: str) -> set[str]:
    """Field names of a ``str.format`` template; malformed braces yield nothing (checked apart)."""
    try:
        return {field for _, field, _, _ in string.Formatter().parse(template) if field}
    except ValueError:
        return set()


def _brace_problem(template: str) -> str | None:
    try:
        list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{template!r}: {exc}; write a literal brace as {{{{ or }}}}"
    return None


class HelixConfig(_Strict):
    """The whole ``helixd.toml``."""

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    # Sections owned by later capabilities; parsed leniently until they land.
    proxy: dict[str, Any] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(default_factory=dict)
    scheduler: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = Field(default_factory=dict)


@dataclass(frozen=True)
class DaemonPaths:
    """The daemon's resolved locations: config values where given, else the mode's defaults."""

    mode: Mode
    socket: Path
    socket_mode: int
    socket_group: str | None
    state_dir: Path
    log_dir: Path


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config together with where it came from."""

    path: Path
    config: HelixConfig

    def paths(self, mode: Mode) -> DaemonPaths:
        """Resolve ``[daemon]`` against the defaults of ``mode`` (system or user)."""
        defaults = default_paths(mode)
        d = self.config.daemon
        mode_str = d.socket_mode or ("0660" if mode == "system" else "0600")
        group = d.socket_group if d.socket_group is not None else defaults.socket_group
        return DaemonPaths(
            mode=mode,
            socket=_resolve(self.path, d.socket) or defaults.socket,
            socket_mode=int(mode_str, 8),
            socket_group=group or None,
            state_dir=_resolve(self.path, d.state_dir) or defaults.state_dir,
            log_dir=_resolve(self.path, d.log_dir) or defaults.log_dir,
        )


def _resolve(config_path: Path, value: Path | None) -> Path | None:
    """Relative paths in a config are relative to the config file, as a reader expects."""
    if value is None:
        return None
    value = value.expanduser()
    return value if value.is_absolute() else (config_path.parent / value).resolve()


def load_config(path: Path | str) -> LoadedConfig:
    """Read and validate ``path``; raise :class:`ConfigError` with a precise message."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; create one with 'helixctl init' "
            "or copy etc/helixd.toml from the helixd sources"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return LoadedConfig(path=path, config=validate_config(data, path.name))


def validate_config(data: Mapping[str, Any], source: str) -> HelixConfig:
    """Validate parsed TOML; ``source`` prefixes every message (usually the file name)."""
    try:
        config = HelixConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {_describe(err)}" for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    problems = _check_semantics(config)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return config


def _check_semantics(config: HelixConfig) -> list[str]:
    """Rules that span keys, which pydantic's per-field validation cannot express."""
    problems: list[str] = []
    fixed_ports: dict[int, str] = {}
    for name, provider in config.providers.items():
        key = f"providers.{name}"
        if not _NAME_RE.match(name):
            problems.append(
                f"{key}: provider names use letters, digits, '.', '_', ':' and '-' "
                "and start with a letter or digit"
            )
        defaults = kind_defaults(provider.kind)
        if provider.command is None and defaults.command is None and provider.kind != "remote":
            problems.append(
                f"{key}.command: required for kind '{provider.kind}', e.g. {defaults.example}"
            )
        for arg in provider.command or ():
            problem = _brace_problem(arg)
            if problem:
                problems.append(f"{key}.command: {problem}")
        unknown = provider.placeholders - PROCESS_PLACEHOLDERS - MODEL_PLACEHOLDERS
        if unknown:
            allowed = ", ".join(
                "{" + p + "}" for p in sorted(PROCESS_PLACEHOLDERS | MODEL_PLACEHOLDERS)
            )
            problems.append(
                f"{key}.command: unknown placeholder "
                f"{', '.join('{' + u + '}' for u in sorted(unknown))}; allowed: {allowed}"
            )
        if provider.kind == "remote" and not provider.url:
            problems.append(f"{key}.url: required for kind 'remote', e.g. 'http://10.0.0.5:8000'")
        if provider.kind != "remote" and provider.url:
            problems.append(f"{key}.url: only kind 'remote' takes a url; helixd runs the others")
        if isinstance(provider.port, int):
            other = fixed_ports.get(provider.port)
            if other is not None:
                problems.append(
                    f"{key}.port: {provider.port} is already used by providers.{other}; "
                    "give each provider its own port or use 'auto'"
                )
            fixed_ports[provider.port] = name
    return problems


def _describe(err: Any) -> str:
    """Turn one pydantic error into ``dotted.key: expected …; got …``."""
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal["))]
    # pydantic adds the union member tag to the location (e.g. ``int``); it means nothing to a user.
    loc = [p for p in loc if p not in {"int", "str", "float", "bool", "list[str]"}]
    key = ".".join(loc) if loc else "(top level)"
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        parent_loc = tuple(err["loc"][:-1])
        allowed = _allowed_keys(parent_loc)
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"{key}: unknown key{hint}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "literal_error":
        expected = ctx.get("expected", "").replace("'", "").replace(" or ", ", ")
        return f"{key}: expected one of {expected}; got {got!r}"
    if kind in {"value_error", "assertion_error"}:
        message = str(ctx.get("error", err["msg"]))
        return f"{key}: {message}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        what = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "string": "a string",
            "list": "a list",
            "dict": "a table",
            "model": "a table",
        }
        expected = next((v for k, v in what.items() if kind.startswith(k)), kind)
        return f"{key}: expected {expected}; got {got!r}"
    return f"{key}: {err['msg']}; got {got!r}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys valid at ``loc`` in the schema, for 'unknown key' hints."""
    model: type[BaseModel] | None = HelixConfig
    for part in loc:
        if model is None:
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            # A dict level such as providers.<name>: the next part is a user-chosen name.
            continue
        model = _model_of(field.annotation)
    return sorted(model.model_fields) if model is not None else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def default_config_path(mode: Mode) -> Path:
    """``--config`` wins, then ``HELIXD_CONFIG``, then the mode's standard place."""
    env = os.environ.get("HELIXD_CONFIG")
    return Path(env) if env else default_paths(mode).config
