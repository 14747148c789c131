"""Configuration: TOML in, validated pydantic models out.

Every error a user can make is reported as ``FILE: dotted.key: what was expected; got X``
so that the message alone says where to look and what to write instead. The daemon
(`helixd --check-config`) and the CLI (`helixctl config check`) share this one validator.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from helixd.config.jobs import JOB_KINDS, JOB_MODELS, JobConfig, effective_jobs
from helixd.config.providers import (
    KEYED_KINDS,
    MODEL_PLACEHOLDERS,
    MULTI_MODEL_KINDS,
    PROCESS_PLACEHOLDERS,
    PROVIDER_KINDS,
    HealthConfig,
    LogConfig,
    ProviderConfig,
    ProviderKind,
    brace_problem,
)
from helixd.config.proxy import ProxyConfig
from helixd.config.residency import FOREVER, ModelConfig, ResourcesConfig, SchedulerConfig
from helixd.config.routes import RouteConfig
from helixd.config.types import NAME_RE, Strict
from helixd.config.ui import UiConfig
from helixd.errors import ConfigError
from helixd.kinds import kind_defaults
from helixd.paths import Mode, default_paths

__all__ = [
    "FOREVER",
    "MAX_CONFIG_BYTES",
    "MODEL_PLACEHOLDERS",
    "PROCESS_PLACEHOLDERS",
    "PROVIDER_KINDS",
    "ConfigError",
    "DaemonConfig",
    "DaemonPaths",
    "HealthConfig",
    "HelixConfig",
    "LoadedConfig",
    "LogConfig",
    "ModelConfig",
    "ProviderConfig",
    "ProviderKind",
    "ProxyConfig",
    "ResourcesConfig",
    "RouteConfig",
    "SchedulerConfig",
    "UiConfig",
    "default_config_path",
    "describe",
    "load_config",
    "validate_config",
]


class DaemonConfig(Strict):
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


class HelixConfig(Strict):
    """The whole ``helixd.toml``."""

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    jobs: dict[str, JobConfig] = Field(default_factory=dict)
    ui: UiConfig = Field(default_factory=UiConfig)

    @property
    def all_jobs(self) -> dict[str, JobConfig]:
        """The configured jobs and the built-in ones the config does not replace."""
        return effective_jobs(self.jobs)


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


# A config is a few KiB of TOML; anything past this is not one (and is not read whole).
MAX_CONFIG_BYTES = 4 * 1024**2


def load_config(path: Path | str) -> LoadedConfig:
    """Read and validate ``path``; raise :class:`ConfigError` with a precise message."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; create one with 'helixctl init' "
            "or copy etc/helixd.toml from the helixd sources"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_CONFIG_BYTES // 1024**2} MiB, which no config is; "
            "is this the right file?"
        )
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
        if not NAME_RE.match(name):
            problems.append(_name_problem(key, "provider"))
        defaults = kind_defaults(provider.kind)
        if provider.command is None and defaults.command is None and provider.kind != "remote":
            problems.append(
                f"{key}.command: required for kind '{provider.kind}', e.g. {defaults.example}"
            )
        for arg in provider.command or ():
            problem = brace_problem(arg)
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
        remote_only = ("price_input_per_mtok", "price_output_per_mtok", "daily_budget")
        for field in remote_only:
            if provider.kind != "remote" and field in provider.model_fields_set:
                problems.append(f"{key}.{field}: only kind 'remote' takes it")
        if provider.kind not in KEYED_KINDS and "api_key_env" in provider.model_fields_set:
            problems.append(f"{key}.api_key_env: only kinds {', '.join(KEYED_KINDS)} take it")
        if isinstance(provider.port, int):
            other = fixed_ports.get(provider.port)
            if other is not None:
                problems.append(
                    f"{key}.port: {provider.port} is already used by providers.{other}; "
                    "give each provider its own port or use 'auto'"
                )
            fixed_ports[provider.port] = name
    problems += _check_models(config)
    problems += _check_routes(config)
    problems += _check_jobs(config)
    return problems


def _check_jobs(config: HelixConfig) -> list[str]:
    """Jobs name models and providers that exist and can do what the job asks."""
    problems: list[str] = []
    models = ", ".join(sorted(config.models)) or "none defined"
    for name, job in config.jobs.items():
        key = f"jobs.{name}"
        if not NAME_RE.match(name):
            problems.append(_name_problem(key, "job"))
        named: list[tuple[str, str]] = []
        if job.kind == "rotation":
            named = [("load", m) for m in job.load] + [("unload", m) for m in job.unload]
        elif job.kind == "health":
            named = [("models", m) for m in job.models]
        for field, wanted in named:
            if wanted not in config.models:
                problems.append(f"{key}.{field}: no model named {wanted!r}; models: {models}")
        if job.kind == "update":
            for wanted in job.providers:
                p = config.providers.get(wanted)
                if p is None:
                    known = ", ".join(sorted(config.providers)) or "none defined"
                    problems.append(
                        f"{key}.providers: no provider named {wanted!r}; providers: {known}"
                    )
                elif p.update is None:
                    problems.append(
                        f"{key}.providers: providers.{wanted} has no update commands; add "
                        f"[providers.{wanted}.update] command = [...]"
                    )
    for name, provider in config.providers.items():
        if provider.update is not None and provider.kind == "remote":
            problems.append(f"providers.{name}.update: helixd does not run remote providers")
    for name, model_config in config.models.items():
        owner = config.providers.get(model_config.provider)
        if model_config.refresh and owner is not None and owner.kind != "ollama":
            problems.append(
                f"models.{name}.refresh: only Ollama models can be re-pulled; "
                f"providers.{model_config.provider} is kind {owner.kind}"
            )
    return problems


def _check_routes(config: HelixConfig) -> list[str]:
    """Routes name models (or aliases) that exist, and do not shadow a model's name."""
    problems: list[str] = []
    names = set(config.models) | {a for m in config.models.values() for a in m.aliases}
    listing = ", ".join(sorted(names)) or "none defined"
    for route, spec in config.routes.items():
        key = f"routes.{route}"
        if not NAME_RE.match(route):
            problems.append(f"{key}: route names follow the model-name rules")
        if route in names:
            problems.append(f"{key}: {route!r} is already a model or alias name")
        for candidate in spec.candidates:
            if candidate not in names:
                problems.append(
                    f"{key}.candidates: no model or alias {candidate!r}; models: {listing}"
                )
        for i, rule in enumerate(spec.rules):
            if rule.model not in names:
                problems.append(f"{key}.rules.{i}.model: no model or alias {rule.model!r}")
        if spec.classifier is not None:
            c = spec.classifier
            named = [("model", c.model), ("default", c.default)]
            named += [(f"labels.{label}", target) for label, target in c.labels.items()]
            for field, target in named:
                if target not in names:
                    problems.append(
                        f"{key}.classifier.{field}: no model or alias {target!r}; models: {listing}"
                    )
    return problems


def _name_problem(key: str, what: str) -> str:
    return (
        f"{key}: {what} names use letters, digits, '.', '_', ':' and '-' "
        "and start with a letter or digit"
    )


def _check_models(config: HelixConfig) -> list[str]:
    """Models must name a provider that can load them; names and aliases must be unique."""
    problems: list[str] = []
    taken: dict[str, str] = {name: f"models.{name}" for name in config.models}
    for name, model in config.models.items():
        key = f"models.{name}"
        if not NAME_RE.match(name):
            problems.append(_name_problem(key, "model"))
        provider = config.providers.get(model.provider)
        if provider is None:
            known = ", ".join(sorted(config.providers)) or "none defined"
            problems.append(
                f"{key}.provider: no provider named {model.provider!r}; providers: {known}"
            )
        elif not provider.is_model_template and provider.kind not in MULTI_MODEL_KINDS:
            problems.append(
                f"{key}.provider: {model.provider!r} (kind {provider.kind}) runs one server "
                "for all its models, which this version cannot load or unload for that kind; "
                "use a provider whose command is a per-model template (with {model_path} or "
                "{model}), or one of kind "
                + ", ".join(MULTI_MODEL_KINDS[:-1])
                + " or "
                + MULTI_MODEL_KINDS[-1]
            )
        elif "model_path" in provider.placeholders and model.path is None:
            problems.append(
                f"{key}.path: required, because providers.{model.provider}.command uses "
                "{model_path}; e.g. path = '/models/qwen2.5-7b-instruct-q4_k_m.gguf'"
            )
        elif provider.kind == "llamacpp-router" and model.path is None:
            problems.append(
                f"{key}.path: required, because providers.{model.provider} is a llama-server "
                "router (kind llamacpp-router) that loads the GGUF file helixd names; "
                "e.g. path = '/models/qwen2.5-7b-instruct-q4_k_m.gguf'"
            )
        if model.sleep_mode and provider is not None and provider.kind != "vllm":
            problems.append(
                f"{key}.sleep_mode: only vLLM has a sleep mode; providers.{model.provider} "
                f"is kind {provider.kind}; remove sleep_mode"
            )
        if provider is not None and "ctx" in provider.placeholders and model.ctx is None:
            problems.append(
                f"{key}.ctx: required, because providers.{model.provider}.command uses "
                "{ctx}; e.g. ctx = 8192"
            )
        for alias in model.aliases:
            other = taken.get(alias)
            if other is not None and other != f"{key}.aliases":
                problems.append(f"{key}.aliases: {alias!r} is already taken by {other}")
            taken[alias] = f"{key}.aliases"
    return problems


def _describe(err: Any) -> str:
    """Turn one pydantic error into ``dotted.key: expected …; got …``."""
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal["))]
    if len(loc) > 2 and loc[0] == "jobs" and loc[2] in JOB_KINDS:
        del loc[2]  # the discriminated union's tag: the user wrote it as kind = "..."
    # pydantic adds the union member tag to the location (e.g. ``int``); it means nothing to a user.
    loc = [p for p in loc if p not in {"int", "str", "float", "bool", "list[str]"}]
    key = ".".join(loc) if loc else "(top level)"
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        parent_loc = tuple(err["loc"][:-1])
        allowed = _allowed_keys(parent_loc)
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        close = _did_you_mean(str(err["loc"][-1]), allowed)
        return f"{key}: unknown key{hint}{close}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind in {"union_tag_not_found", "union_tag_invalid"}:
        kinds = ", ".join(JOB_KINDS)
        if kind == "union_tag_invalid":
            return f"{key}.kind: expected one of {kinds}; got {ctx.get('tag')!r}"
        return f"{key}.kind: required key is missing; one of {kinds}"
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


def _did_you_mean(word: str, allowed: list[str]) -> str:
    """``; did you mean 'keep_alive'?`` for a near miss (``keepalive``, ``keep-alive``)."""
    import difflib

    folded = {k.replace("_", "").lower(): k for k in allowed}
    exact = folded.get(word.replace("_", "").replace("-", "").lower())
    close = [exact] if exact else difflib.get_close_matches(word, allowed, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys valid at ``loc`` in the schema, for 'unknown key' hints."""
    model: type[BaseModel] | None = HelixConfig
    for part in loc:
        if model is None:
            return []
        if loc[0] == "jobs" and str(part) in JOB_KINDS:
            model = JOB_MODELS[str(part)]  # the union's tag names the job's own table
            continue
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


def describe(config: HelixConfig) -> str:
    """``1 provider: llama; 2 models: coder, router``: what a valid config defines."""

    def count(names: list[str], word: str) -> str:
        return f"{len(names)} {word}{'s' if len(names) != 1 else ''}: {', '.join(names) or 'none'}"

    text = count(list(config.providers), "provider")
    if config.models:
        text += "; " + count(list(config.models), "model")
    return text


def default_config_path(mode: Mode) -> Path:
    """``--config`` wins, then ``HELIXD_CONFIG``, then the mode's standard place."""
    env = os.environ.get("HELIXD_CONFIG")
    return Path(env) if env else default_paths(mode).config
