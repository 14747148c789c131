"""What each provider kind brings by default: command, health probe, environment.

The adapters of later capabilities (load/unload, upstream URLs) hang off the same kinds;
this module only knows how a kind's server process is started and probed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KindDefaults:
    """Defaults of one provider kind; a provider's own keys override them."""

    command: tuple[str, ...] | None
    health_path: str | None
    health_tcp: bool = False
    env: dict[str, str] = field(default_factory=dict)
    # Replaces the provider default of 60 s unless the provider sets start_seconds.
    start_seconds: float | None = None
    example: str = "['my-server', '--port', '{port}']"


_KINDS: dict[str, KindDefaults] = {
    "echo": KindDefaults(
        command=(
            "{python}",
            "-m",
            "helixd.providers.echo",
            "--host",
            "{host}",
            "--port",
            "{port}",
        ),
        health_path="/health",
    ),
    "ollama": KindDefaults(
        command=("ollama", "serve"),
        health_path="/",
        # helixd decides model lifetimes, so Ollama's own scheduler must never unload
        # (keep-alive forever) nor evict (high max-loaded); see DESIGN.md.
        env={
            "OLLAMA_HOST": "{host}:{port}",
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_MAX_LOADED_MODELS": "64",
        },
    ),
    "llamacpp": KindDefaults(
        command=None,
        health_path="/health",
        example=(
            "['llama-server', '-m', '{model_path}', '--host', '{host}', '--port', '{port}', "
            "'-c', '{ctx}', '-ngl', '{gpu_layers}']"
        ),
    ),
    "vllm": KindDefaults(
        command=None,
        health_path="/health",
        # A first start downloads, compiles and captures CUDA graphs: minutes, not seconds.
        start_seconds=600.0,
        example=(
            "['vllm', 'serve', '{model_id}', '--served-model-name', '{model}', '--host', "
            "'{host}', '--port', '{port}', '--gpu-memory-utilization', "
            "'{gpu_memory_utilization}']"
        ),
    ),
    "localai": KindDefaults(
        command=("local-ai", "run"),
        health_path="/readyz",
        # One scheduler decides for every provider: LocalAI's own idle/busy watchdogs
        # and its LRU limit stay off (they are off by default; set so a LocalAI config
        # file or environment cannot turn them on behind helixd).
        env={
            "LOCALAI_ADDRESS": "{host}:{port}",
            "LOCALAI_WATCHDOG_IDLE": "false",
            "LOCALAI_WATCHDOG_BUSY": "false",
            "LOCALAI_SINGLE_ACTIVE_BACKEND": "false",
            "LOCALAI_MAX_ACTIVE_BACKENDS": "0",
            # Newer LocalAI refuses a model for a while after a failed load; helixd's
            # failed_cooldown_s already decides when to try again.
            "LOCALAI_MODEL_LOAD_FAILURE_COOLDOWN": "0s",
        },
        example="['local-ai', 'run', '--address', '{host}:{port}']",
    ),
    "tabbyapi": KindDefaults(
        command=None,
        health_path="/health",
        example=(
            "['/opt/tabbyAPI/venv/bin/python', 'main.py', '--host', '{host}', '--port', "
            "'{port}'] with cwd = '/opt/tabbyAPI'"
        ),
    ),
    "openai": KindDefaults(command=None, health_path=None, health_tcp=True),
    "remote": KindDefaults(command=None, health_path=None, health_tcp=True),
}


def kind_defaults(kind: str) -> KindDefaults:
    """Defaults for ``kind``; kinds are validated by config, so this never misses."""
    return _KINDS[kind]
