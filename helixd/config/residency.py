"""``[resources]``, ``[scheduler]`` and ``[models.NAME]``: what may be resident, and where.

Memory is declared in MiB (``vram_mib``, ``ram_mib``) because that is how people read
``nvidia-smi``; everything downstream works in bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from helixd.config.types import Seconds, Strict, parse_duration_s

FOREVER = math.inf


def _parse_keep_alive(value: Any) -> Any:
    """``"forever"`` (or ``-1``, as Ollama writes it) never unloads; else a duration."""
    if value == "forever" or (isinstance(value, int | float) and value < 0):
        return FOREVER
    return parse_duration_s(value)


KeepAlive = Annotated[float, BeforeValidator(_parse_keep_alive), Field(gt=0)]


def _check_gpus(value: Any) -> Any:
    """One clear message instead of one per member of the union."""
    if value in ("auto", "none"):
        return value
    indexes = isinstance(value, list) and all(type(v) is int and 0 <= v <= 63 for v in value)
    if indexes and value and len(set(value)) == len(value):
        return value
    raise ValueError(f"expected 'auto', 'none' or a list of distinct GPU indexes; got {value!r}")


GpuSelection = Annotated[Literal["auto", "none"] | list[int], BeforeValidator(_check_gpus)]


class ResourcesConfig(Strict):
    """``[resources]``: which GPUs helixd may use and what it keeps free for others."""

    gpus: GpuSelection = "auto"
    vram_reserve_mib: int = Field(default=512, ge=0)
    ram_reserve_mib: int = Field(default=2048, ge=0)
    max_loaded_models: int = Field(default=0, ge=0)


class SchedulerConfig(Strict):
    """``[scheduler]``: residency defaults and the bounds on waiting."""

    keep_alive: KeepAlive = 600.0
    # How long a request may wait for its model: a load, a free slot, busy models to idle.
    load_timeout_s: Seconds = 600.0
    busy_wait_s: Seconds = 60.0
    # After a failed load, requests fail fast for this long instead of retrying the load.
    failed_cooldown_s: Seconds = 30.0
    # After an unload, how long to wait for the memory to show up free before the next load.
    memory_return_s: Seconds = 5.0
    # How often resident models' memory is re-measured (and the TTL timers checked).
    sample_interval_s: Seconds = 5.0


class ModelConfig(Strict):
    """``[models."NAME"]``: a name clients ask for, its provider, and its memory needs."""

    provider: str
    # The provider-native id (Ollama tag, vLLM repo id); defaults to the model's name.
    id: str | None = None
    # A file or folder for process-per-model providers (``{model_path}``).
    path: Path | None = None
    aliases: list[str] = Field(default_factory=list)
    pinned: bool = False
    keep_alive: KeepAlive | None = None
    max_concurrency: int = Field(default=4, ge=1, le=4096)
    max_queue: int = Field(default=64, ge=0, le=100_000)
    ctx: int | None = Field(default=None, ge=16, le=10_000_000)
    # Layers offloaded to the GPU ({gpu_layers}); 999 = all, as llama.cpp users write it.
    # A model placed in host RAM gets 0.
    gpu_layers: int = Field(default=999, ge=0)
    vram_mib: int | None = Field(default=None, ge=0)
    ram_mib: int | None = Field(default=None, ge=0)
    # Extra arguments appended to a process-per-model provider's command for this model.
    args: list[str] = Field(default_factory=list)
    # vLLM only: unloading puts the model to sleep (weights to host RAM, GPU freed) and the
    # next load wakes it in seconds; needs a vLLM with sleep mode (0.7.3 or later).
    sleep_mode: bool = False
    # Ollama only: the update job re-pulls this model and reports what changed.
    refresh: bool = False
