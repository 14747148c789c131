"""A model's memory figure: declared in config, else measured before, else estimated.

Declared wins because the user knows best (a quantisation the estimate cannot see); a
measurement beats an estimate once the model has run here with the same parameters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from helixd.config import ModelConfig, ProviderConfig

MiB = 1024**2

Source = Literal["declared", "measured", "estimated", "unknown"]


@dataclass(frozen=True)
class MemoryFigure:
    """What a model needs: GPU memory on its device and host RAM, and where that came from."""

    vram_bytes: int
    ram_bytes: int
    source: Source
    detail: str = ""


def size_key(
    model: str, provider: str, provider_config: ProviderConfig, config: ModelConfig, on_gpu: bool
) -> str:
    """Identify a model *and the parameters that shape its size*, for remembered figures."""
    shaping = {
        "model": model,
        "provider": provider,
        "command": provider_config.command,
        "kind": provider_config.kind,
        "id": config.id,
        "path": str(config.path) if config.path else None,
        "ctx": config.ctx,
        "gpu_layers": config.gpu_layers,
        "args": config.args,
        "placement": "gpu" if on_gpu else "cpu",
    }
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
    return f"{model}:{digest}"


def memory_figure(
    config: ModelConfig,
    measured: Mapping[str, int] | None,
    estimated_bytes: int | None,
    estimate_detail: str,
    on_gpu: bool,
) -> MemoryFigure:
    """Combine the three sources. ``on_gpu``: the model will live on a GPU (else in RAM)."""
    primary_declared = config.vram_mib if on_gpu else config.ram_mib
    if config.vram_mib is not None or config.ram_mib is not None:
        vram = (config.vram_mib or 0) * MiB
        ram = (config.ram_mib or 0) * MiB
        if primary_declared is None and measured is not None:
            # Declared for the other device only: the measurement fills this one.
            vram = vram if config.vram_mib is not None else measured["vram_bytes"]
            ram = ram if config.ram_mib is not None else measured["ram_bytes"]
        return MemoryFigure(vram, ram, "declared", "vram_mib/ram_mib in config")
    if measured is not None:
        return MemoryFigure(
            measured["vram_bytes"], measured["ram_bytes"], "measured", "measured at its last load"
        )
    if estimated_bytes is not None:
        if on_gpu:
            return MemoryFigure(estimated_bytes, 0, "estimated", estimate_detail)
        return MemoryFigure(0, estimated_bytes, "estimated", estimate_detail)
    return MemoryFigure(0, 0, "unknown", estimate_detail or "no size declared and none known yet")
