"""Read-only views of residency's books: the data the core, the adapters and the API see.

These functions turn model entries and the last resource sample into a core
:class:`~helixd.scheduler.core.Snapshot`, the frozen :class:`ModelStatus` everyone
outside the scheduler reads instead of an entry, the ``status`` figures for devices and
models, and the :class:`~helixd.providers.base.ModelTarget` a load asks an adapter for.
They read and never act, so they change when what is shown changes, not when how models
are loaded and unloaded does; the executor (:class:`helixd.scheduler.residency.Residency`)
keeps thin methods that call them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from helixd.config import ModelConfig, ResourcesConfig, SchedulerConfig
from helixd.providers.base import ModelAdapter, ModelTarget
from helixd.resources.monitor import ResourceSample
from helixd.scheduler.core import (
    RAM,
    DeviceView,
    LoadRequest,
    ModelState,
    ModelView,
    Snapshot,
    format_bytes,
    free_bytes,
)
from helixd.scheduler.entry import ModelEntry

MiB = 1024**2


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One model as residency had it at one moment: what the proxy, the jobs, the
    control API and the daemon read (a copy: changing nothing, and never changing).

    Apart from the core's :class:`~helixd.scheduler.core.ModelView` on purpose: that one
    holds what decisions need (the monotonic ``last_used``, ``stale``, a pending pin),
    this one what readers show and use (the config, the adapter, the wall-clock time).
    """

    name: str
    state: ModelState
    config: ModelConfig
    # The provider's adapter: how to reach the model's server (upstream URL, headers,
    # dialect) and which provider it is. Residency alone asks it to load or unload.
    adapter: ModelAdapter
    device: str | None
    pinned: bool
    pinned_by_config: bool
    in_flight: int
    queued: int
    last_used_wall: float | None
    keep_alive_s: float
    message: str
    failed_until: float
    vram_bytes: int  # accounted while resident
    ram_bytes: int
    size_bytes: int  # the figure a load plans with (VRAM plus RAM)
    log_tail: tuple[str, ...]

    @property
    def provider(self) -> str:
        """The provider serving it."""
        return self.adapter.provider

    @property
    def loaded(self) -> bool:
        """Resident and awake: a request is served without a load."""
        return self.state == ModelState.LOADED


def model_status(entry: ModelEntry, keep_alive: float) -> ModelStatus:
    """``entry`` frozen now; ``keep_alive``: the default idle TTL."""
    e = entry
    return ModelStatus(
        name=e.name,
        state=e.state,
        config=e.config,
        adapter=e.adapter,
        device=e.device,
        pinned=e.pinned,
        pinned_by_config=e.pinned_by_config,
        in_flight=e.in_flight,
        queued=e.queued,
        last_used_wall=e.last_used_wall,
        keep_alive_s=e.config.keep_alive or keep_alive,
        message=e.message,
        failed_until=e.failed_until,
        vram_bytes=e.accounted_vram,
        ram_bytes=e.accounted_ram,
        size_bytes=e.figure.vram_bytes + e.figure.ram_bytes,
        log_tail=tuple(e.log_tail),
    )


def snapshot(
    models: Mapping[str, ModelEntry],
    sample: ResourceSample,
    resources: ResourcesConfig,
    loading_devices: AbstractSet[str],
    leave_out: str | None = None,
    keep_alive: float = math.inf,
) -> Snapshot:
    """The core's view of the world now; ``keep_alive``: the default idle TTL."""
    reserve = resources.vram_reserve_mib * MiB
    gpus = tuple(
        DeviceView(f"gpu{g.index}", g.total_bytes, reserve, g.free_bytes) for g in sample.gpus
    )
    ram = DeviceView(
        RAM,
        sample.ram.total_bytes,
        resources.ram_reserve_mib * MiB,
        sample.ram.available_bytes,
    )
    views = model_views(models, keep_alive, leave_out)
    loading = frozenset(loading_devices)
    if leave_out is not None and models[leave_out].device is not None:
        loading = loading - {models[leave_out].device or ""}
    return Snapshot(gpus, ram, views, resources.max_loaded_models, loading)


def model_views(
    models: Mapping[str, ModelEntry], keep_alive: float, leave_out: str | None = None
) -> dict[str, ModelView]:
    """Each model's frozen facts, in the books' order; ``leave_out`` shows as unloaded."""
    return {e.name: model_view(e, keep_alive, e.name == leave_out) for e in models.values()}


def model_view(entry: ModelEntry, keep_alive: float, as_unloaded: bool = False) -> ModelView:
    """One model's frozen facts; ``keep_alive``: the default idle TTL."""
    e = entry
    return ModelView(
        name=e.name,
        state=ModelState.UNLOADED if as_unloaded else e.state,
        device=e.device if e.device != RAM else None,
        vram_bytes=e.accounted_vram,
        ram_bytes=e.accounted_ram,
        pinned=e.pinned,
        in_flight=e.in_flight,
        queued=e.queued,
        last_used=e.last_used,
        stale=e.stale,
        removed=e.removed,
        keep_alive_s=e.config.keep_alive or keep_alive,
        failed_until=e.failed_until,
        pin_pending=e.pin_task is not None and not e.pin_task.done(),
    )


def devices(
    models: Mapping[str, ModelEntry],
    sample: ResourceSample | None,
    resources: ResourcesConfig,
    loading_devices: AbstractSet[str],
) -> dict[str, Any]:
    """Devices for ``status``: figures, helixd's budget and what it accounts."""
    if sample is None:
        return {"mode": "unknown", "gpus": [], "ram": None}
    now = snapshot(models, sample, resources, loading_devices)
    gpus = []
    for g, view in zip(sample.gpus, now.gpus, strict=True):
        gpus.append(
            {
                "id": view.id,
                "index": g.index,
                "name": g.name,
                "uuid": g.uuid,
                "total_bytes": g.total_bytes,
                "used_bytes": g.used_bytes,
                "free_bytes": g.free_bytes,
                "reserve_bytes": view.reserve_bytes,
                "budget_bytes": max(0, free_bytes(now, view)),
            }
        )
    return {
        "mode": sample.gpu_mode,
        "note": sample.gpu_note,
        "gpus": gpus,
        "ram": {
            "total_bytes": sample.ram.total_bytes,
            "available_bytes": sample.ram.available_bytes,
            "reserve_bytes": now.ram.reserve_bytes,
            "budget_bytes": max(0, free_bytes(now, now.ram)),
        },
    }


def model_info(entry: ModelEntry, scheduler: SchedulerConfig) -> dict[str, Any]:
    """The control API's view of one model."""
    keep = entry.config.keep_alive or scheduler.keep_alive
    return {
        "name": entry.name,
        "provider": entry.adapter.provider,
        "state": str(entry.state),
        "state_since": entry.state_since_wall,
        "device": entry.device,
        "vram_bytes": entry.accounted_vram or entry.figure.vram_bytes,
        "ram_bytes": entry.accounted_ram or entry.figure.ram_bytes,
        # The source of the figures shown above: once a loaded model has been measured,
        # they are the measurement even where the plan uses a declared size.
        "memory_source": "measured" if entry.accounted_measured else entry.figure.source,
        "memory_detail": _memory_detail(entry),
        "pinned": entry.pinned,
        "pin_source": "runtime" if entry.runtime_pin is not None else "config",
        "keep_alive_s": None if math.isinf(keep) else keep,
        "expires_at": _expires_at(entry, keep),
        "last_used": entry.last_used_wall,
        "in_flight": entry.in_flight,
        "queued": entry.queued,
        "max_concurrency": entry.config.max_concurrency,
        "max_queue": entry.config.max_queue,
        "aliases": list(entry.config.aliases),
        "message": entry.message,
        "upstream": entry.adapter.upstream(entry.name),
        "process": entry.adapter.process_info(entry.name),
        "size_text": format_bytes(entry.figure.vram_bytes or entry.figure.ram_bytes),
        **({"log_tail": entry.log_tail} if entry.state == ModelState.FAILED else {}),
    }


def _expires_at(entry: ModelEntry, keep_alive_s: float) -> float | None:
    """When (wall clock) keep-alive unloads the model if nothing uses it until then."""
    if (
        entry.state != ModelState.LOADED
        or entry.pinned
        or not entry.idle
        or math.isinf(keep_alive_s)
        or entry.last_used_wall is None
    ):
        return None
    return entry.last_used_wall + keep_alive_s


def _memory_detail(entry: ModelEntry) -> str:
    if entry.accounted_measured and entry.figure.source == "declared":
        declared = format_bytes(entry.figure.vram_bytes or entry.figure.ram_bytes)
        return f"measured while loaded; plans use the declared {declared} (vram_mib/ram_mib)"
    return entry.figure.detail


def summary_counts(entries: Iterable[ModelEntry]) -> Mapping[str, int]:
    """How many models are in each state."""
    counts: dict[str, int] = {}
    for e in entries:
        counts[str(e.state)] = counts.get(str(e.state), 0) + 1
    return counts


def model_target(
    entry: ModelEntry, device: str, request: LoadRequest, sample: ResourceSample | None
) -> ModelTarget:
    """What to ask the adapter to load: ``entry`` placed on ``device`` for ``request``.

    ``sample`` is the last one taken; it gives the GPU's size for the memory share
    (vLLM's ``--gpu-memory-utilization``: the model's whole GPU figure over the card's
    total, rounded down to the hundredth vLLM is given, so that the shares of models on
    one card never add up to more than the budgets the scheduler gave them).
    """
    gpu_index = None if device == RAM else int(device.removeprefix("gpu"))
    utilization = 0.9
    need = max(request.vram_bytes, entry.figure.vram_bytes)
    if gpu_index is not None and sample is not None:
        total = next((g.total_bytes for g in sample.gpus if g.index == gpu_index), 0)
        if total and need:
            # (+1e-6: a share measured from vLLM itself must not drift down a hundredth a load)
            utilization = min(0.95, max(0.05, math.floor(need * 100 / total + 1e-6) / 100))
    c = entry.config
    return ModelTarget(
        name=entry.name,
        model_id=c.id or entry.name,
        path=c.path,
        ctx=c.ctx,
        gpu_layers=c.gpu_layers if gpu_index is not None else 0,
        args=tuple(c.args),
        gpu_index=gpu_index,
        gpu_memory_utilization=utilization,
        sleep_mode=c.sleep_mode,
    )
