"""``[providers.NAME]``: a kind of inference server, how to run it and how to probe it."""

from __future__ import annotations

import re
import signal
import string
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator, Field, field_validator, model_validator

from helixd.config.types import ByteSize, Seconds, Strict, parse_duration_s

ProviderKind = Literal[
    "echo",
    "ollama",
    "llamacpp",
    "llamacpp-router",
    "vllm",
    "localai",
    "tabbyapi",
    "openai",
    "remote",
]
PROVIDER_KINDS: tuple[str, ...] = get_args(ProviderKind)

# Kinds whose one server loads and unloads many models through its API (an adapter
# drives them); any other provider-level command serves no configured models.
MULTI_MODEL_KINDS = ("remote", "ollama", "llamacpp-router", "localai", "tabbyapi")
# Kinds whose server may want an API key (``api_key_env``).
KEYED_KINDS = ("remote", "localai", "tabbyapi")

# Placeholders a provider-level command may use; model placeholders mark a per-model template.
PROCESS_PLACEHOLDERS = frozenset({"port", "host", "name", "state_dir", "log_dir", "python"})
MODEL_PLACEHOLDERS = frozenset(
    {"model", "model_path", "model_id", "ctx", "gpu_layers", "gpu_memory_utilization"}
)


class HealthConfig(Strict):
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


class LogConfig(Strict):
    """Per-process log file rotation."""

    max_bytes: ByteSize = 10 * 1024 * 1024
    backups: int = Field(default=5, ge=0, le=100)


class UpdateCommands(Strict):
    """``[providers.NAME.update]``: how the update job updates this provider (argv lists).

    ``version`` prints the installed version; ``command`` updates; ``rollback`` puts the
    previous version back when the updated provider fails its checks. They run with the
    provider's ``env`` and ``cwd``, never through a shell.
    """

    command: list[str]
    version: list[str] | None = None
    rollback: list[str] | None = None
    timeout_s: Seconds = 600.0

    @field_validator("command", "version", "rollback")
    @classmethod
    def _argv(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0].strip()):
            raise ValueError(
                "expected a non-empty list of arguments, e.g. ['pip', 'install', '-U', 'vllm']"
            )
        return value


class ProviderConfig(Strict):
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
    stop_timeout_s: Annotated[float, BeforeValidator(parse_duration_s), Field(gt=0, le=120)] = 10.0
    health: HealthConfig = Field(default_factory=HealthConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    # kind "remote" only: an OpenAI-compatible server helixd does not run.
    url: str | None = None
    # The environment variable holding its API key (sent as Bearer), never the key itself.
    api_key_env: str | None = None
    # Price per million tokens, and a daily budget in the same currency (UTC days).
    price_input_per_mtok: float = Field(default=0.0, ge=0)
    price_output_per_mtok: float = Field(default=0.0, ge=0)
    daily_budget: float | None = Field(default=None, gt=0)
    # How the update job updates it (off when absent).
    update: UpdateCommands | None = None

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// base URL; got {value!r}")
        if value.rstrip("/").endswith("/v1"):
            raise ValueError(
                f"expected the base URL without /v1 (helixd adds /v1/...); got {value!r}"
            )
        return value.rstrip("/")

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
            found.update(placeholders_of(arg))
        return found

    @property
    def is_model_template(self) -> bool:
        """True when the command is started once per model rather than once per provider."""
        return bool(self.placeholders & MODEL_PLACEHOLDERS)


def placeholders_of(template: str) -> set[str]:
    """Field names of a ``str.format`` template; malformed braces yield nothing (checked apart)."""
    try:
        return {field for _, field, _, _ in string.Formatter().parse(template) if field}
    except ValueError:
        return set()


def brace_problem(template: str) -> str | None:
    try:
        list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{template!r}: {exc}; write a literal brace as {{{{ or }}}}"
    return None
