"""The rotation job: at its scheduled times, make a named set of models resident.

``unload`` goes first so that its memory is free for ``load``. Pins are respected: a
model pinned in the config is never unloaded by a rotation (the run says so). With
``pin = true`` the rotation owns the runtime pins of the models it names: the loaded
set is pinned until the next rotation, whatever its keep_alive, and the unloaded set is
unpinned first. A model that is busy is left loaded and the run says so; its
keep_alive will unload it later.
"""

from __future__ import annotations

from typing import Any

from helixd.config.jobs import RotationJob
from helixd.jobs.base import JobContext, JobOutcome
from helixd.scheduler import ModelState, ResidencyError

_RESIDENT = (ModelState.LOADED, ModelState.LOADING, ModelState.SLEEPING)


async def run_rotation(ctx: JobContext, job: RotationJob) -> JobOutcome:
    """Unload one set, then load the other; report what happened to each model."""
    results: dict[str, dict[str, Any]] = {}
    for name in job.unload:
        results[name] = await _unload(ctx, job, name)
    for name in job.load:
        results[name] = await _load(ctx, job, name)
    failed = [n for n, r in results.items() if r["result"] == "failed"]
    groups: dict[str, list[str]] = {}
    for name, r in results.items():
        groups.setdefault(r["result"], []).append(name)
    text = "; ".join(f"{what} {', '.join(names)}" for what, names in groups.items())
    if failed:
        text += " — " + "; ".join(f"{n}: {results[n]['message']}" for n in failed)
    return JobOutcome(not failed, text, {"models": results})


async def _unload(ctx: JobContext, job: RotationJob, name: str) -> dict[str, Any]:
    model = ctx.residency.find(name)
    if model is None:
        return {"result": "failed", "message": "no longer configured"}
    if model.pinned_by_config:
        return {"result": "kept", "message": "pinned in the config"}
    if job.pin and model.pinned:  # pinned at run time, by this rotation's load
        ctx.set_pin(name, False)
        model = ctx.residency.view(name)
    if model.pinned:
        return {"result": "kept", "message": "pinned (helixctl unpin to let it go)"}
    if model.state not in _RESIDENT:
        return {"result": "not loaded", "message": ""}
    try:
        # Twice for a sleep-mode model: a rotation frees its RAM as well as its GPU.
        if (await ctx.residency.unload(name)).state == ModelState.SLEEPING:
            await ctx.residency.unload(name)
    except ResidencyError as exc:
        if exc.code == "busy":
            return {"result": "kept", "message": str(exc)}
        return {"result": "failed", "message": str(exc)}
    return {"result": "unloaded", "message": ""}


async def _load(ctx: JobContext, job: RotationJob, name: str) -> dict[str, Any]:
    if ctx.residency.find(name) is None:
        return {"result": "failed", "message": "no longer configured"}
    if job.pin:
        ctx.set_pin(name, True)
    try:
        model = await ctx.residency.load(name, timeout=job.timeout_s)
    except ResidencyError as exc:
        return {"result": "failed", "message": str(exc)}
    return {"result": "loaded", "message": model.device or ""}
