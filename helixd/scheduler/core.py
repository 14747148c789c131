"""The residency decision core: a snapshot and a request in, a plan out.

No I/O and no clock: everything it needs (free memory, sizes, pins, last use, work in
flight) is in the :class:`Snapshot`, so it is tested exhaustively, with hypothesis too.

Budget of a device = the smaller of (what the device reports free - reserve) and
(total - reserve - what helixd accounts to models resident on it). The first term sees
other users of the GPU; the second sees a load that has not allocated its memory yet.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from helixd.scheduler.effects import Join, Load, Ready, Refuse, Wait

__all__ = [
    "HOLDING",
    "RAM",
    "RESIDENT",
    "DeviceView",
    "Join",
    "Load",
    "LoadRequest",
    "ModelState",
    "ModelView",
    "Plan",
    "Ready",
    "Refuse",
    "Snapshot",
    "Wait",
    "accounted_bytes",
    "format_bytes",
    "free_bytes",
    "plan_load",
    "queue_is_full",
    "resident_count",
]

RAM = "ram"


class ModelState(enum.StrEnum):
    """The public model states (DESIGN.md)."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"
    # vLLM's sleep mode: the process lives on with its weights in host RAM and almost
    # nothing on the GPU; waking it takes seconds where a cold start takes minutes.
    SLEEPING = "sleeping"


# States whose memory is (or is about to be) taken.
HOLDING = frozenset(
    {ModelState.LOADING, ModelState.LOADED, ModelState.UNLOADING, ModelState.SLEEPING}
)
# States counted against ``max_loaded_models`` (a sleeping model serves nothing).
RESIDENT = frozenset({ModelState.LOADING, ModelState.LOADED})


@dataclass(frozen=True)
class DeviceView:
    """One device as the core sees it: a GPU (``gpu0``…) or host RAM (``ram``)."""

    id: str
    total_bytes: int
    reserve_bytes: int
    reported_free_bytes: int


@dataclass(frozen=True)
class ModelView:
    """One model's residency facts. ``device`` is the GPU it occupies (None: RAM only).

    The last five serve the periodic pass: ``stale`` (its config changed while resident),
    ``removed`` (it left the config), ``keep_alive_s`` (its idle TTL; inf: forever),
    ``failed_until`` (the end of a failed load's cool-down) and ``pin_pending`` (a load
    to bring it back, as a pinned model, is under way).
    """

    name: str
    state: ModelState
    device: str | None
    vram_bytes: int
    ram_bytes: int
    pinned: bool = False
    in_flight: int = 0
    queued: int = 0
    last_used: float = 0.0
    stale: bool = False
    removed: bool = False
    keep_alive_s: float = math.inf
    failed_until: float = 0.0
    pin_pending: bool = False

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing waiting: the only kind of model that may be evicted."""
        return self.in_flight == 0 and self.queued == 0


def queue_is_full(in_flight: int, waiting: int, max_concurrency: int, max_queue: int) -> bool:
    """Whether one more request for a model must be refused (429 ``queue_full``).

    ``waiting`` counts every request not yet holding a slot, including those waiting for
    a load. Up to ``max_concurrency`` of them are not queued at all: they take the free
    slots the moment the model is ready (a request that triggers a cold load is waiting
    for its slot, not queued behind anyone). Only those beyond the free slots count
    against ``max_queue``.
    """
    free_slots = max(0, max_concurrency - in_flight)
    return waiting - free_slots >= max_queue


@dataclass(frozen=True)
class Snapshot:
    """Everything a decision depends on, frozen at one moment."""

    gpus: tuple[DeviceView, ...]
    ram: DeviceView
    models: Mapping[str, ModelView]
    max_loaded_models: int = 0
    loading_devices: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LoadRequest:
    """Make ``model`` resident; it needs ``vram_bytes`` on one GPU (if ``gpu``) and RAM.

    ``device``: only there (a sleeping model wakes on the GPU it sleeps on; its request
    asks only for what waking adds). ``exclusive``: models that cannot stay resident
    beside it (a server that holds one model at a time, such as TabbyAPI); they are
    evicted first whatever their age, and a pinned or busy one blocks the load.
    """

    model: str
    vram_bytes: int
    ram_bytes: int
    gpu: bool
    device: str | None = None
    exclusive: frozenset[str] = frozenset()


Plan = Ready | Join | Load | Wait | Refuse


def format_bytes(n: float) -> str:
    """``19.4 GiB`` / ``512 MiB``: how people read GPU memory."""
    if abs(n) >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB"


def accounted_bytes(snapshot: Snapshot, device: str) -> int:
    """What helixd accounts to models holding memory on ``device``."""
    total = 0
    for m in snapshot.models.values():
        if m.state in HOLDING:
            total += m.ram_bytes if device == RAM else (m.vram_bytes if m.device == device else 0)
    return total


def free_bytes(snapshot: Snapshot, device: DeviceView) -> int:
    """The device's budget for a new model (may be negative when over-committed)."""
    reported = device.reported_free_bytes - device.reserve_bytes
    by_account = device.total_bytes - device.reserve_bytes - accounted_bytes(snapshot, device.id)
    return min(reported, by_account)


def resident_count(snapshot: Snapshot) -> int:
    """Models counted against ``max_loaded_models`` (those leaving are not)."""
    return sum(m.state in RESIDENT for m in snapshot.models.values())


def plan_load(snapshot: Snapshot, request: LoadRequest) -> Plan:
    """Decide how to make ``request.model`` resident."""
    current = snapshot.models.get(request.model)
    if current is not None:
        if current.state == ModelState.LOADED:
            return Ready(request.model)
        if current.state == ModelState.LOADING:
            return Join(request.model)
        if current.state == ModelState.UNLOADING:
            return Wait(request.model, f"{request.model} is unloading", (request.model,))
    if request.gpu and not snapshot.gpus:
        return Refuse(request.model, f"{request.model} needs a GPU and helixd has none to use")
    devices = snapshot.gpus if request.gpu else (snapshot.ram,)
    if request.device is not None:
        devices = tuple(d for d in devices if d.id == request.device)
    options = [_option(snapshot, request, d, idle_only=True) for d in devices]
    workable = [o for o in options if o is not None]
    if workable:
        free_of_loading = [o for o in workable if o.device not in snapshot.loading_devices]
        if not free_of_loading:
            busy = tuple(sorted({o.device for o in workable}))
            return Wait(request.model, f"a load is under way on {', '.join(busy)}", busy)
        best = min(free_of_loading, key=lambda o: (len(o.victims), -o.free_after))
        return Load(request.model, best.device, best.victims)
    waits = [_option(snapshot, request, d, idle_only=False) for d in devices]
    if any(w is not None for w in waits):
        blocking = _busy_or_moving(snapshot)
        return Wait(
            request.model,
            f"{request.model} fits once these are idle or gone: {', '.join(blocking)}",
            tuple(blocking),
            busy=True,
        )
    return Refuse(request.model, _refusal(snapshot, request, devices))


@dataclass(frozen=True)
class _Option:
    device: str
    victims: tuple[str, ...]
    free_after: int


def _option(
    snapshot: Snapshot, request: LoadRequest, device: DeviceView, idle_only: bool
) -> _Option | None:
    """The shortest LRU prefix of eligible victims that makes room on ``device``, if any.

    With ``idle_only`` false, busy and moving (loading, unloading) unpinned models count as
    if they could go: that answers "would waiting help?", never "whom to evict now".
    """
    gpu = device.id if device.id != RAM else None
    vram_short = (request.vram_bytes - free_bytes(snapshot, device)) if gpu else 0
    # Without a GPU the model's GPU share lives in host memory too.
    ram_need = request.ram_bytes if gpu else request.ram_bytes + request.vram_bytes
    ram_short = ram_need - free_bytes(snapshot, snapshot.ram)
    count_short = 0
    if snapshot.max_loaded_models:
        count_short = resident_count(snapshot) + 1 - snapshot.max_loaded_models
    victims: list[str] = []
    freed_ram = freed_vram = 0
    forced = _exclusive_holders(snapshot, request)
    if any(m.pinned or (idle_only and not _evictable_now(m)) for m in forced):
        return None
    eligible = [m for m in _eligible(snapshot, idle_only) if m.name != request.model]
    for m in [*forced, *(e for e in eligible if e not in forced)]:
        if vram_short <= 0 and ram_short <= 0 and count_short <= 0 and m not in forced:
            break
        frees_vram = gpu is not None and m.device == gpu and m.vram_bytes > 0
        frees_ram = m.ram_bytes > 0
        counts = m.state in RESIDENT
        if (
            m in forced
            or (vram_short > 0 and frees_vram)
            or (ram_short > 0 and frees_ram)
            or (count_short > 0 and counts)
        ):
            victims.append(m.name)
            if frees_vram:
                vram_short -= m.vram_bytes
                freed_vram += m.vram_bytes
            ram_short -= m.ram_bytes
            freed_ram += m.ram_bytes
            if counts:
                count_short -= 1
    if vram_short > 0 or ram_short > 0 or count_short > 0:
        return None
    # A sleeping model wakes in seconds: keep those the later (awake) victims made
    # unnecessary, rather than stop them for room already found.
    for m in [v for v in snapshot.models.values() if v.name in victims]:
        held_here = m.vram_bytes if gpu is not None and m.device == gpu else 0
        if (
            m.state == ModelState.SLEEPING
            and m not in forced
            and held_here <= -vram_short
            and m.ram_bytes <= -ram_short
        ):
            victims.remove(m.name)
            vram_short += held_here
            ram_short += m.ram_bytes
            freed_vram -= held_here
            freed_ram -= m.ram_bytes
    if gpu is None:
        return _Option(device.id, tuple(victims), free_bytes(snapshot, device) + freed_ram)
    return _Option(device.id, tuple(victims), free_bytes(snapshot, device) + freed_vram)


def _evictable_now(m: ModelView) -> bool:
    return m.state in (ModelState.LOADED, ModelState.SLEEPING) and m.idle


def _exclusive_holders(snapshot: Snapshot, request: LoadRequest) -> list[ModelView]:
    """Models that must leave before ``request.model`` loads, oldest first."""
    found = [
        m
        for name in request.exclusive
        if (m := snapshot.models.get(name)) is not None and m.state in HOLDING
    ]
    return sorted(found, key=lambda m: (m.last_used, m.name))


def _eligible(snapshot: Snapshot, idle_only: bool) -> list[ModelView]:
    """Unpinned models that hold memory, least recently used first."""
    return _eligible_among(snapshot.models.values(), idle_only)


def _eligible_among(models: Iterable[ModelView], idle_only: bool) -> list[ModelView]:
    allowed = (ModelState.LOADED, ModelState.SLEEPING) if idle_only else tuple(HOLDING)
    found = [m for m in models if not m.pinned and m.state in allowed and (m.idle or not idle_only)]
    return sorted(found, key=lambda m: (m.last_used, m.name))


def eviction_order(models: Mapping[str, ModelView]) -> list[str]:
    """The models a load that needs room would evict now, first victim first.

    The order :func:`plan_load` takes idle victims in (least recently used first; pinned
    and busy models never), so a view can say who goes next.
    """
    return [m.name for m in _eligible_among(models.values(), idle_only=True)]


def _busy_or_moving(snapshot: Snapshot) -> list[str]:
    return sorted(
        m.name
        for m in snapshot.models.values()
        if not m.pinned
        and (
            (m.state in (ModelState.LOADED, ModelState.SLEEPING) and not m.idle)
            or m.state in (ModelState.LOADING, ModelState.UNLOADING)
        )
    )


def _refusal(snapshot: Snapshot, request: LoadRequest, devices: Iterable[DeviceView]) -> str:
    """``X needs 19.4 GiB on GPU0; 3.1 GiB free; pinned: a (4.1 GiB); busy: c``."""
    parts = []
    for device in devices:
        on_gpu = device.id != RAM
        need = request.vram_bytes if on_gpu else request.ram_bytes + request.vram_bytes
        label = device.id.upper() if on_gpu else "host RAM"
        usable = device.total_bytes - device.reserve_bytes
        if need > usable:
            parts.append(
                f"needs {format_bytes(need)} on {label}, which has {format_bytes(usable)} "
                f"in all after its reserve"
            )
            continue
        pinned = [
            m
            for m in snapshot.models.values()
            if m.pinned and m.state in HOLDING and (m.device == device.id or not on_gpu)
        ]
        free = format_bytes(free_bytes(snapshot, device))
        text = f"needs {format_bytes(need)} on {label}; {free} free"
        if pinned:
            held = ", ".join(
                f"{m.name} ({format_bytes(m.vram_bytes if on_gpu else m.ram_bytes)})"
                for m in sorted(pinned, key=lambda m: m.name)
            )
            text += f"; pinned: {held}"
        if on_gpu and request.ram_bytes > free_bytes(snapshot, snapshot.ram):
            text += f"; host RAM: {format_bytes(free_bytes(snapshot, snapshot.ram))} free"
        busy = [
            m.name
            for m in snapshot.models.values()
            if not m.pinned
            and m.state in HOLDING
            and not _evictable_now(m)
            and (m.device == device.id or not on_gpu)
        ]
        if busy:
            text += f"; busy: {', '.join(sorted(busy))}"
        parts.append(text)
    if snapshot.max_loaded_models and resident_count(snapshot) >= snapshot.max_loaded_models:
        parts.append(f"max_loaded_models = {snapshot.max_loaded_models} reached, all pinned")
    pinned_beside = [m.name for m in _exclusive_holders(snapshot, request) if m.pinned]
    if pinned_beside:
        parts.append(
            f"its server holds one model at a time and {', '.join(pinned_beside)} is pinned"
        )
    return f"{request.model} " + " · ".join(parts)
