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
    # Probed instead of ``health_path`` once the server answers 404 there (it has no such
    # route); only when the provider does not set health.path itself.
    health_fallback_path: str | None = None
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
        # llama.cpp's llama-server answers /health (503 while loading); llama-cpp-python's
        # server (python -m llama_cpp.server), which this kind also covers, has no /health
        # and answers 404 there, but both answer /v1/models (llama-server with the same
        # 503 while loading). A 404 is the server itself saying the route does not exist,
        # so falling back on it works however the server is launched (a wrapper script, a
        # container, uvicorn on llama_cpp.server.app), where recognising llama_cpp.server
        # in the command would miss those and misfire on commands that merely mention it.
        health_fallback_path="/v1/models",
        example=(
            "['llama-server', '-m', '{model_path}', '--host', '{host}', '--port', '{port}', "
            "'-c', '{ctx}', '-ngl', '{gpu_layers}']"
        ),
    ),
    "llamacpp-router": KindDefaults(
        command=("llama-server",),
        health_path="/health",
        # llama-server without a model is a router (helixd.providers.llama_router): its
        # models come from the preset file helixd writes, and helixd decides what is
        # resident, so the router never evicts (models-max 0: no limit) nor loads a model
        # a request names (autoload off). Children inherit the environment: CUDA numbers
        # devices as NVML does, so the preset's CUDA<i> is helixd's GPU i.
        env={
            "LLAMA_ARG_HOST": "{host}",
            "LLAMA_ARG_PORT": "{port}",
            "LLAMA_ARG_MODELS_PRESET": "{state_dir}/{name}.models.ini",
            "LLAMA_ARG_MODELS_MAX": "0",
            "LLAMA_ARG_MODELS_AUTOLOAD": "false",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        },
        example="['/opt/llama.cpp/bin/llama-server']",
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
