"""Making room, decided: what a load asks for, how victims leave, sleep or stop, and the
re-plan after an out-of-memory load.

Pure functions of a frozen :class:`~helixd.scheduler.core.Snapshot` (or the figures they
name) and the request; placement itself is :func:`helixd.scheduler.core.plan_load`.
They return effects (:mod:`helixd.scheduler.effects`) or figures, and never act.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from helixd.scheduler.core import (
    RAM,
    LoadRequest,
    ModelState,
    Snapshot,
    format_bytes,
    free_bytes,
    plan_load,
)
from helixd.scheduler.effects import Load, Refuse, Sleep, Stop, Unload, Wait

MiB = 1024**2

# After an out-of-memory load, retry once asking for this much more room.
OOM_RETRY_FACTOR = 1.5
OOM_RETRY_MIN_EXTRA = 1024 * MiB
# An unload counts as done once this share of the model's memory shows up free again.
MEMORY_BACK_SHARE = 0.8
# Asleep, a model keeps its CUDA context and little else on the GPU.
ASLEEP_MAX_SHARE = 0.5


def exclusive_set(model: str, servers: Mapping[str, object]) -> frozenset[str]:
    """The models that cannot stay resident beside ``model`` on a one-model server:
    every other model ``servers`` maps to the same server."""
    server = servers[model]
    return frozenset(n for n, s in servers.items() if s is server and n != model)


def load_request(
    snapshot: Snapshot,
    model: str,
    figure: tuple[int, int],
    wants_gpu: bool,
    exclusive: frozenset[str] = frozenset(),
) -> LoadRequest:
    """What making ``model`` resident asks of the core, given its ``(vram, ram)`` figure.

    ``wants_gpu``: its config and provider would put it on a GPU, if there is one. A
    sleeping model wakes where it sleeps and asks only for what waking adds.
    """
    m = snapshot.models[model]
    vram, ram = figure
    if m.state == ModelState.SLEEPING and m.device is not None:
        return LoadRequest(
            model,
            max(0, vram - m.vram_bytes),
            max(0, ram - m.ram_bytes),
            gpu=True,
            device=m.device,
            exclusive=exclusive,
        )
    return LoadRequest(model, vram, ram, bool(snapshot.gpus) and wants_gpu, exclusive=exclusive)


def booking(
    plan: Load, request: LoadRequest, waking: bool, held: tuple[int, int]
) -> tuple[int, int]:
    """The ``(vram, ram)`` to book for a load as planned, until it is measured.

    Waking, what it held asleep stays booked and what waking adds comes on top; on host
    RAM alone, its GPU share lives in RAM too.
    """
    if waking:
        return held[0] + request.vram_bytes, held[1] + request.ram_bytes
    if plan.device == RAM:
        return 0, request.vram_bytes + request.ram_bytes
    return request.vram_bytes, request.ram_bytes


def evictions(victims: Iterable[str], device: str) -> tuple[Unload, ...]:
    """How the victims of a load on ``device`` leave, in order. For a load on a GPU a
    sleep-mode victim sleeps: it gives its GPU memory back and keeps its weights in RAM."""
    why = f"evicted for a load on {device}"
    return tuple(Unload(name, why, sleep=device != RAM) for name in victims)


def plan_sleep(snapshot: Snapshot, model: str, figure_vram: int) -> Sleep | Stop:
    """Sleep, or stop for want of host RAM: asleep, the weights live in host RAM, up to
    what the model holds on the GPU (booked, or its figure if that is larger)."""
    room = free_bytes(snapshot, snapshot.ram)
    need = max(snapshot.models[model].vram_bytes, figure_vram)
    if need > room:
        return Stop(
            model,
            f"host RAM too short to hold it asleep ({format_bytes(room)} free, "
            f"up to {format_bytes(need)} needed)",
        )
    return Sleep(model, need)


def asleep_check(model: str, awake_vram: int, measured_vram: int) -> Stop | None:
    """Believe a sleep only if the GPU memory went: vLLM answers a sleep even when it was
    started without sleep mode, and then frees nothing."""
    if awake_vram and measured_vram > awake_vram * ASLEEP_MAX_SHARE:
        return Stop(
            model, f"it said it sleeps but still holds {format_bytes(measured_vram)} of the GPU"
        )
    return None


def memory_to_wait_for(device: str, vram: int, process_gone: bool) -> int:
    """How much of an unloaded model's memory to wait to see free again. Only GPU drivers
    free lazily; host RAM is back when the process is gone. A lost model's process is
    gone already: its memory was freed before anyone could look."""
    return vram if device != RAM and not process_gone else 0


def memory_is_back(freed: int, expected: int) -> bool:
    """An unload counts as done once most of what it held shows up free."""
    return freed >= expected * MEMORY_BACK_SHARE


def plan_oom_retry(snapshot: Snapshot, request: LoadRequest, device: str) -> Load | Refuse:
    """After an out-of-memory load on ``device``: plan again there, asking for more.

    ``snapshot`` shows the failed model unloaded. The provider knows better than our
    figures: ask for more than the whole budget that seemed free, so the core names at
    least one more victim, in LRU order. No more victim: a refusal that says why.
    """
    if device == RAM:
        budget = free_bytes(snapshot, snapshot.ram)
        need = request.ram_bytes + request.vram_bytes
        bigger = dataclasses.replace(request, vram_bytes=0, ram_bytes=_more_than(need, budget))
    else:
        snapshot = dataclasses.replace(
            snapshot, gpus=tuple(g for g in snapshot.gpus if g.id == device)
        )
        budget = free_bytes(snapshot, snapshot.gpus[0])
        bigger = dataclasses.replace(request, vram_bytes=_more_than(request.vram_bytes, budget))
    plan = plan_load(snapshot, bigger)
    if isinstance(plan, Load) and plan.evict:
        return plan
    reason = plan.reason if isinstance(plan, Refuse | Wait) else "nothing to evict"
    return Refuse(
        request.model, f"out of memory on {device}, and no more room: {reason}", "out_of_memory"
    )


def _more_than(need: int, budget: int) -> int:
    return int(max(need * OOM_RETRY_FACTOR, need + OOM_RETRY_MIN_EXTRA, budget + 1))
