"""Residency over time, decided without a loop: the periodic pass and the unloading requests.

Tables for the messages and each rule, hypothesis for the invariants over random models
and over random sequences of events (requests, time passing, passes).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helixd.scheduler.core import ModelState, ModelView
from helixd.scheduler.effects import BringBack, Forget, Refuse, TickPlan, Unload
from helixd.scheduler.policy import (
    MIN_DUE_S,
    admission_refusal,
    cooldown_refusal,
    has_free_slot,
    on_lost,
    plan_tick,
    restart,
    unload_on_request,
    unload_refusal,
)

GiB = 1024**3
NOW = 1000.0
PACE = 5.0  # sample_interval_s
S = ModelState


def view(name: str = "a", state: ModelState = S.LOADED, **kw: object) -> ModelView:
    fields: dict[str, object] = {
        "device": "gpu0",
        "vram_bytes": 4 * GiB,
        "ram_bytes": 0,
        "keep_alive_s": 60.0,
        "last_used": NOW,
    }
    fields.update(kw)
    return ModelView(name=name, state=state, **fields)  # type: ignore[arg-type]


def tick(*models: ModelView, now: float = NOW, sampled_at: float | None = NOW) -> TickPlan:
    return plan_tick({m.name: m for m in models}, now, PACE, sampled_at)


# -- the periodic pass, case by case ---------------------------------------------------

TICK_CASES: list[tuple[str, ModelView, float, tuple[object, ...]]] = [
    ("idle past keep-alive sleeps or stops", view(), NOW + 61,
     (Unload("a", "idle for 60 s (keep_alive)", sleep=True),)),
    ("exactly at keep-alive", view(), NOW + 60,
     (Unload("a", "idle for 60 s (keep_alive)", sleep=True),)),
    ("idle within keep-alive stays", view(), NOW + 59, ()),
    ("in flight stays", view(in_flight=1), NOW + 3600, ()),
    ("queued stays", view(queued=1), NOW + 3600, ()),
    ("pinned stays", view(pinned=True), NOW + 3600, ()),
    ("forever stays", view(keep_alive_s=math.inf), NOW + 10**9, ()),
    ("asleep is not expired again", view(state=S.SLEEPING), NOW + 3600, ()),
    ("loading is not expired", view(state=S.LOADING), NOW + 3600, ()),
    ("stale idle goes", view(stale=True), NOW, (Unload("a", "config changed"),)),
    ("removed idle goes", view(stale=True, removed=True), NOW,
     (Unload("a", "removed from the config"),)),
    ("stale busy waits", view(stale=True, in_flight=2), NOW, ()),
    ("stale pinned reloads", view(stale=True, pinned=True), NOW,
     (Unload("a", "config changed; loading it again"),)),
    ("stale asleep stops", view(state=S.SLEEPING, stale=True), NOW,
     (Unload("a", "config changed (it was asleep)"),)),
    ("removed asleep stops", view(state=S.SLEEPING, stale=True, removed=True), NOW,
     (Unload("a", "removed from the config (it was asleep)"),)),
    ("stale failure is forgotten", view(state=S.FAILED, stale=True, failed_until=NOW + 30),
     NOW, (Forget("a"),)),
    ("stale pinned failure is forgotten and tried", view(
        state=S.FAILED, stale=True, pinned=True, failed_until=NOW + 30), NOW,
     (Forget("a"), BringBack("a"))),
    ("missing pin comes back", view(state=S.UNLOADED, pinned=True), NOW, (BringBack("a"),)),
    ("sleeping pin wakes", view(state=S.SLEEPING, pinned=True), NOW, (BringBack("a"),)),
    ("failed pin waits out its cool-down", view(
        state=S.FAILED, pinned=True, failed_until=NOW + 10), NOW, ()),
    ("failed pin after its cool-down", view(
        state=S.FAILED, pinned=True, failed_until=NOW - 1), NOW, (BringBack("a"),)),
    ("one pending pin load is enough", view(state=S.UNLOADED, pinned=True, pin_pending=True),
     NOW, ()),
    ("a removed pin is not brought back", view(
        state=S.UNLOADED, pinned=True, removed=True), NOW, ()),
    ("a loading pin is left alone", view(state=S.LOADING, pinned=True), NOW, ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "now", "effects"), [c[1:] for c in TICK_CASES], ids=[c[0] for c in TICK_CASES]
)
def test_tick_cases(model: ModelView, now: float, effects: tuple[object, ...]) -> None:
    assert tick(model, now=now).effects == effects


def test_the_next_pass_is_due_at_the_nearest_timer_or_the_sampling_pace() -> None:
    assert tick(view(keep_alive_s=math.inf)).due_s == PACE
    assert tick(view(), now=NOW + 58).due_s == pytest.approx(2.0)
    cooling = view("p", S.FAILED, pinned=True, failed_until=NOW + 3)
    assert tick(view(), cooling, now=NOW + 58).due_s == pytest.approx(2.0)
    assert tick(view(), cooling, now=NOW + 57.5).due_s == pytest.approx(2.5)
    assert tick(view(), now=NOW + 59.99).due_s == MIN_DUE_S  # never a busy loop
    assert tick(view(), now=NOW + 61).due_s == PACE  # an expired timer is no timer


def test_figures_are_read_at_the_sampling_pace_only() -> None:
    assert tick(sampled_at=None).sample
    assert not tick(sampled_at=NOW - PACE + 0.1).sample
    assert tick(sampled_at=NOW - PACE).sample


def test_effects_come_in_the_books_order() -> None:
    models = [view(n, last_used=NOW - 100) for n in ("c", "a", "b")]
    assert [e.model for e in tick(*models).effects] == ["c", "a", "b"]


# -- the periodic pass, for any models -------------------------------------------------

STATES = list(ModelState)


@st.composite
def model_views(draw: st.DrawFn, name: str) -> ModelView:
    return ModelView(
        name=name,
        state=draw(st.sampled_from(STATES)),
        device=draw(st.sampled_from([None, "gpu0", "gpu1"])),
        vram_bytes=draw(st.integers(0, 8)) * GiB,
        ram_bytes=draw(st.integers(0, 2)) * GiB,
        pinned=draw(st.booleans()),
        in_flight=draw(st.sampled_from([0, 0, 1, 3])),
        queued=draw(st.sampled_from([0, 0, 2])),
        last_used=draw(st.floats(0, 2 * NOW)),
        stale=draw(st.booleans()),
        removed=draw(st.booleans()),
        keep_alive_s=draw(st.sampled_from([1.0, 60.0, 600.0, math.inf])),
        failed_until=draw(st.sampled_from([0.0, NOW - 1, NOW + 5, NOW + 30])),
        pin_pending=draw(st.booleans()),
    )


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, ModelView]:
    n = draw(st.integers(0, 6))
    return {f"m{i}": draw(model_views(f"m{i}")) for i in range(n)}


@settings(max_examples=500, deadline=None)
@given(worlds(), st.floats(0, 3 * NOW), st.one_of(st.none(), st.floats(0, 3 * NOW)))
def test_a_pass_never_unloads_a_busy_model_nor_expires_a_pinned_one(
    models: dict[str, ModelView], now: float, sampled_at: float | None
) -> None:
    plan = plan_tick(models, now, PACE, sampled_at)
    for effect in plan.effects:
        m = models[effect.model]
        if isinstance(effect, Unload):
            assert m.idle, f"unloaded busy {m.name}"
            assert not effect.process_gone
            if effect.sleep:  # a keep-alive expiry: idle, unpinned, loaded, past it
                assert not m.pinned and m.state == S.LOADED and not m.stale
                assert now - m.last_used >= m.keep_alive_s
                assert effect.why == f"idle for {m.keep_alive_s:g} s (keep_alive)"
            else:  # a config that changed: only such models are settled
                assert m.stale
        elif isinstance(effect, BringBack):
            assert m.pinned and not m.removed and not m.pin_pending
        else:
            assert isinstance(effect, Forget) and m.stale and m.state == S.FAILED
    assert MIN_DUE_S <= plan.due_s <= max(PACE, MIN_DUE_S)
    assert plan.sample == (sampled_at is None or now - sampled_at >= PACE)


@settings(max_examples=500, deadline=None)
@given(worlds(), st.floats(0, 3 * NOW))
def test_a_pass_expires_every_idle_unpinned_model_past_its_keep_alive(
    models: dict[str, ModelView], now: float
) -> None:
    plan = plan_tick(models, now, PACE, now)
    unloaded = {e.model for e in plan.effects if isinstance(e, Unload)}
    for m in models.values():
        expired = now - m.last_used >= m.keep_alive_s
        if m.state == S.LOADED and m.idle and not m.pinned and (expired or m.stale):
            assert m.name in unloaded
        kinds = [type(e) for e in plan.effects if e.model == m.name]
        assert len(kinds) == len(set(kinds)), "one effect of a kind per model and pass"


@settings(max_examples=300, deadline=None)
@given(worlds(), st.floats(0, 3 * NOW))
def test_a_pass_is_a_function_of_its_inputs(models: dict[str, ModelView], now: float) -> None:
    before = dict(models)
    assert plan_tick(models, now, PACE, None) == plan_tick(models, now, PACE, None)
    assert models == before


# -- sequences of events, with the executor played by a dict ---------------------------

EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0.0, 120.0)),
        st.tuples(st.just("start"), st.sampled_from(["a", "b", "p"])),
        st.tuples(st.just("end"), st.sampled_from(["a", "b", "p"])),
        st.tuples(st.just("tick"), st.just(0)),
    ),
    max_size=40,
)


def _apply(models: dict[str, ModelView], plan: TickPlan) -> None:
    """What the executor's effects come to once they are done (loads and unloads end)."""
    for effect in plan.effects:
        m = models[effect.model]
        if isinstance(effect, Unload):
            gone = S.SLEEPING if effect.sleep and m.name == "b" else S.UNLOADED
            models[m.name] = dataclasses.replace(m, state=gone, stale=False)
        elif isinstance(effect, BringBack):
            models[m.name] = dataclasses.replace(m, state=S.LOADED)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_event_sequences_keep_pins_and_busy_models_resident(
    events: list[tuple[str, object]],
) -> None:
    now = NOW
    models = {
        "a": view("a", S.UNLOADED, keep_alive_s=60.0),
        "b": view("b", S.UNLOADED, keep_alive_s=30.0),  # a sleep-mode model
        "p": view("p", S.UNLOADED, pinned=True),
    }
    for kind, arg in events:
        if kind == "advance":
            assert isinstance(arg, float)
            now += arg
        elif kind == "start":
            m = models[str(arg)]
            models[m.name] = dataclasses.replace(
                m, state=S.LOADED, in_flight=m.in_flight + 1, last_used=now
            )
        elif kind == "end" and models[str(arg)].in_flight:
            m = models[str(arg)]
            models[m.name] = dataclasses.replace(m, in_flight=m.in_flight - 1, last_used=now)
        else:
            busy_before = {n for n, m in models.items() if not m.idle}
            _apply(models, plan_tick(models, now, PACE, now))
            for n in busy_before:
                assert models[n].state == S.LOADED, f"{n} went while busy"
            assert models["p"].state == S.LOADED, "the pin is resident after every pass"
            for m in models.values():
                if m.state == S.LOADED and not m.pinned and m.idle:
                    assert now - m.last_used < m.keep_alive_s, f"{m.name} outlived keep_alive"


# -- refusals and the requests that unload ---------------------------------------------


def test_a_failed_model_is_refused_until_its_cool_down_ends_and_says_when() -> None:
    failed = view(state=S.FAILED, failed_until=NOW + 12.4)
    refused = cooldown_refusal(failed, "CUDA out of memory", NOW)
    assert refused == Refuse(
        "a",
        "a failed to load: CUDA out of memory; next try in 12 s (or now: helixctl load a)",
        "model_failed",
    )
    assert cooldown_refusal(failed, "x", NOW + 12.4) is None
    assert cooldown_refusal(view(failed_until=NOW + 30), "x", NOW) is None  # loaded


def test_a_full_queue_is_refused_with_its_numbers() -> None:
    m = view(in_flight=1, queued=3)
    refused = admission_refusal(m, max_concurrency=2, max_queue=2)
    assert refused == Refuse(
        "a",
        "a: queue full (3 waiting for 1 free slot(s), max_queue = 2); try again later",
        "queue_full",
    )
    assert admission_refusal(m, max_concurrency=2, max_queue=3) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 6), st.integers(0, 10), st.integers(1, 4), st.integers(0, 6))
def test_admission_matches_the_queue_rule(
    in_flight: int, queued: int, concurrency: int, max_queue: int
) -> None:
    refused = admission_refusal(view(in_flight=in_flight, queued=queued), concurrency, max_queue)
    free = max(0, concurrency - in_flight)
    assert (refused is not None) == (queued - free >= max_queue)


SLOT_CASES = [
    (S.LOADED, 0, 1, True),
    (S.LOADED, 1, 1, False),
    (S.LOADED, 1, 4, True),
    (S.LOADING, 0, 4, False),
    (S.SLEEPING, 0, 4, False),
]


@pytest.mark.parametrize(("state", "in_flight", "concurrency", "free"), SLOT_CASES)
def test_a_slot_is_free_only_on_a_loaded_model_below_its_concurrency(
    state: ModelState, in_flight: int, concurrency: int, free: bool
) -> None:
    assert has_free_slot(view(state=state, in_flight=in_flight), concurrency) is free


def test_an_operator_unload_refuses_pinned_and_busy_models() -> None:
    assert unload_refusal(view(pinned=True, in_flight=1)) == Refuse(
        "a", "a is pinned; unpin it first (helixctl unpin a)", "pinned"
    )
    assert unload_refusal(view(in_flight=1, queued=2)) == Refuse(
        "a", "a is busy (1 in flight, 2 queued); try again when it is idle", "busy"
    )
    assert unload_refusal(view()) is None


UNLOAD_CASES = [
    (S.LOADED, Unload("a", "unloaded on request", sleep=True)),
    (S.SLEEPING, Unload("a", "stopped on request (it was asleep)")),
    (S.FAILED, Unload("a", "unloaded on request")),
    (S.UNLOADED, None),
    (S.UNLOADING, None),
    (S.LOADING, None),
]


@pytest.mark.parametrize(("state", "effect"), UNLOAD_CASES)
def test_an_operator_unload_sleeps_a_loaded_model_and_stops_others(
    state: ModelState, effect: Unload | None
) -> None:
    assert unload_on_request(view(state=state)) == effect


@pytest.mark.parametrize("state", list(ModelState))
def test_restart_and_lost_unload_only_what_holds_a_process(state: ModelState) -> None:
    held = state in (S.LOADED, S.SLEEPING, S.FAILED)
    expected = Unload("a", "hung") if held else None
    assert restart(view(state=state, pinned=True, in_flight=2), "hung") == expected
    lost = on_lost(view(state=state), "exited with code 1")
    if state in (S.LOADED, S.SLEEPING):
        assert lost == Unload("a", "lost: exited with code 1", process_gone=True)
    else:
        assert lost is None
