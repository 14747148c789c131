"""Residency over time, decided: the periodic pass and the requests that unload a model.

Pure functions of frozen :class:`~helixd.scheduler.core.ModelView` facts, the event or
request, and ``now``; they return effects (:mod:`helixd.scheduler.effects`) and never
act, wait or read a clock. The executor takes a snapshot, asks, and carries the answer
out, so TTLs, pins, cool-downs and the operator's unloads are tested without a loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from helixd.scheduler.core import ModelState, ModelView, queue_is_full
from helixd.scheduler.effects import BringBack, Forget, Refuse, TickEffect, TickPlan, Unload

# However soon a timer falls due, a pass waits at least this long for the next.
MIN_DUE_S = 0.05

# Not resident: a pinned model in one of these states is brought back.
_MISSING = (ModelState.UNLOADED, ModelState.FAILED, ModelState.SLEEPING)


def plan_tick(
    models: Mapping[str, ModelView],
    now: float,
    sample_interval_s: float,
    sampled_at: float | None,
) -> TickPlan:
    """One maintenance pass over ``models`` (in their order) at ``now``.

    Unloads idle unpinned models past their keep-alive (a sleep-mode one may sleep),
    settles models whose config changed or that left it once they are idle, forgets a
    stale failure, and brings back missing pinned models once their cool-down is over.
    ``sampled_at``: when the figures were last read (None: never); they are read again
    at the sampling pace. The next pass is due at the nearest timer, or the pace.
    """
    effects: list[TickEffect] = []
    due = sample_interval_s
    for view in models.values():
        found, left = _tick_one(view, now)
        effects += found
        if left is not None:
            due = min(due, left)
    sample = sampled_at is None or now - sampled_at >= sample_interval_s
    return TickPlan(tuple(effects), max(due, MIN_DUE_S), sample)


def _tick_one(m: ModelView, now: float) -> tuple[list[TickEffect], float | None]:
    """One model's effects in the order they apply, and how soon its timer falls due."""
    effects: list[TickEffect] = []
    state, stale, failed_until = m.state, m.stale, m.failed_until
    left: float | None = None
    if stale and state == ModelState.FAILED:
        # Nothing resident: the new config simply deserves a fresh try.
        effects.append(Forget(m.name))
        state, stale, failed_until = ModelState.UNLOADED, False, 0.0
    if stale and state == ModelState.LOADED and m.idle and m.pinned:
        effects.append(Unload(m.name, "config changed; loading it again"))
        state, stale = ModelState.UNLOADING, False
    if state == ModelState.LOADED and m.idle and not m.pinned:
        if stale:
            effects.append(Unload(m.name, _why_stale(m)))
            state, stale = ModelState.UNLOADING, False
        elif not math.isinf(m.keep_alive_s):
            left = m.last_used + m.keep_alive_s - now
            if left <= 0:
                why = f"idle for {m.keep_alive_s:g} s (keep_alive)"
                effects.append(Unload(m.name, why, sleep=True))
                state, left = ModelState.UNLOADING, None
    if stale and state == ModelState.SLEEPING and m.idle:
        effects.append(Unload(m.name, f"{_why_stale(m)} (it was asleep)"))
        state = ModelState.UNLOADING
    if m.removed or not m.pinned or state not in _MISSING:
        return effects, left
    if failed_until - now > 0:
        return effects, failed_until - now
    if not m.pin_pending:
        effects.append(BringBack(m.name))
    return effects, left


def _why_stale(m: ModelView) -> str:
    return "removed from the config" if m.removed else "config changed"


def cooldown_refusal(m: ModelView, message: str, now: float) -> Refuse | None:
    """A model whose load failed is not tried again until its cool-down ends."""
    if m.state != ModelState.FAILED or now >= m.failed_until:
        return None
    left = m.failed_until - now
    return Refuse(
        m.name,
        f"{m.name} failed to load: {message}; next try in {left:.0f} s "
        f"(or now: helixctl load {m.name})",
        "model_failed",
    )


def admission_refusal(m: ModelView, max_concurrency: int, max_queue: int) -> Refuse | None:
    """One more request for ``m`` is refused when its queue is full (see queue_is_full)."""
    if not queue_is_full(m.in_flight, m.queued, max_concurrency, max_queue):
        return None
    return Refuse(
        m.name,
        f"{m.name}: queue full ({m.queued} waiting for {max_concurrency - m.in_flight} "
        f"free slot(s), max_queue = {max_queue}); try again later",
        "queue_full",
    )


def has_free_slot(m: ModelView, max_concurrency: int) -> bool:
    """A request may take a slot now: the model is loaded and below its concurrency."""
    return m.state == ModelState.LOADED and m.in_flight < max_concurrency


def unload_refusal(m: ModelView) -> Refuse | None:
    """An operator's unload never takes a pinned or a busy model."""
    if m.pinned:
        return Refuse(
            m.name, f"{m.name} is pinned; unpin it first (helixctl unpin {m.name})", "pinned"
        )
    if not m.idle:
        return Refuse(
            m.name,
            f"{m.name} is busy ({m.in_flight} in flight, {m.queued} queued); "
            "try again when it is idle",
            "busy",
        )
    return None


def unload_on_request(m: ModelView) -> Unload | None:
    """What an operator's unload does once no load is under way: a sleep-mode model that
    is loaded sleeps (a second unload stops it); a sleeping or failed one stops."""
    if m.state == ModelState.SLEEPING:
        return Unload(m.name, "stopped on request (it was asleep)")
    if m.state == ModelState.LOADED:
        return Unload(m.name, "unloaded on request", sleep=True)
    if m.state == ModelState.FAILED:
        return Unload(m.name, "unloaded on request")
    return None


def restart(m: ModelView, why: str) -> Unload | None:
    """A recycle stops whatever the model's server holds, pinned or busy, before loading."""
    if m.state in (ModelState.LOADED, ModelState.SLEEPING, ModelState.FAILED):
        return Unload(m.name, why)
    return None


def on_lost(m: ModelView, why: str) -> Unload | None:
    """A resident model's process ended by itself: book it gone (its memory is free)."""
    if m.state in (ModelState.LOADED, ModelState.SLEEPING):
        return Unload(m.name, f"lost: {why}", process_gone=True)
    return None
