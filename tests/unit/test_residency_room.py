"""Making room, decided without a loop: what a load asks for, sleep or stop, how victims
leave, and the re-plan after an out-of-memory load. Tables plus hypothesis."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helixd.scheduler.core import (
    RAM,
    DeviceView,
    LoadRequest,
    ModelState,
    ModelView,
    Snapshot,
    format_bytes,
    free_bytes,
    plan_load,
)
from helixd.scheduler.effects import Load, Refuse, Sleep, Stop, Unload
from helixd.scheduler.room import (
    asleep_check,
    booking,
    evictions,
    exclusive_set,
    load_request,
    memory_is_back,
    memory_to_wait_for,
    plan_oom_retry,
    plan_sleep,
)

GiB = 1024**3
MiB = 1024**2
S = ModelState


def model(name: str, gib: float, last_used: float = 0.0, **kw: object) -> ModelView:
    fields: dict[str, object] = {
        "state": S.LOADED,
        "device": "gpu0",
        "vram_bytes": int(gib * GiB),
        "ram_bytes": 0,
        "last_used": last_used,
    }
    fields.update(kw)
    return ModelView(name=name, **fields)  # type: ignore[arg-type]


def world(*models: ModelView, gpu_gib: int = 24, ram_free_gib: float = 60) -> Snapshot:
    held = sum(m.vram_bytes for m in models if m.state != S.UNLOADED)
    gpu = DeviceView("gpu0", gpu_gib * GiB, 0, gpu_gib * GiB - held)
    ram = DeviceView(RAM, 64 * GiB, 0, int(ram_free_gib * GiB))
    return Snapshot((gpu,), ram, {m.name: m for m in models})


# -- what a load asks for --------------------------------------------------------------


def test_a_cold_load_asks_for_its_figure_on_a_gpu_when_it_wants_one_and_there_is_one() -> None:
    s = world(model("a", 0, state=S.UNLOADED))
    assert load_request(s, "a", (4 * GiB, GiB), True) == LoadRequest("a", 4 * GiB, GiB, True)
    assert load_request(s, "a", (4 * GiB, GiB), False).gpu is False
    no_gpu = Snapshot((), s.ram, s.models)
    assert load_request(no_gpu, "a", (4 * GiB, GiB), True).gpu is False


def test_a_sleeping_model_wakes_where_it_sleeps_asking_only_for_what_it_lacks() -> None:
    asleep = model("a", 0.5, state=S.SLEEPING, device="gpu1", ram_bytes=3 * GiB)
    request = load_request(world(asleep), "a", (4 * GiB, 2 * GiB), False, frozenset({"t"}))
    assert request == LoadRequest(
        "a", int(3.5 * GiB), 0, gpu=True, device="gpu1", exclusive=frozenset({"t"})
    )


def test_a_one_model_server_excludes_every_other_model_it_serves() -> None:
    tabby, other = object(), object()
    servers = {"t1": tabby, "t2": tabby, "t3": tabby, "x": other}
    assert exclusive_set("t1", servers) == frozenset({"t2", "t3"})
    assert exclusive_set("x", servers) == frozenset()


BOOKING_CASES = [
    ("gpu0", False, (7, 7), (4, 1)),  # a cold load books its request
    (RAM, False, (7, 7), (0, 5)),  # on host RAM alone, the GPU share lives in RAM
    ("gpu0", True, (1, 3), (5, 4)),  # waking adds to what it holds asleep
]


@pytest.mark.parametrize(("device", "waking", "held", "booked"), BOOKING_CASES)
def test_a_load_books_its_request_until_it_is_measured(
    device: str, waking: bool, held: tuple[int, int], booked: tuple[int, int]
) -> None:
    request = LoadRequest("a", 4, 1, device != RAM)
    assert booking(Load("a", device), request, waking, held) == booked


# -- how victims leave, and when their memory is back ------------------------------------


def test_victims_of_a_gpu_load_may_sleep_and_those_of_a_ram_load_stop() -> None:
    assert evictions(["b", "c"], "gpu1") == (
        Unload("b", "evicted for a load on gpu1", sleep=True),
        Unload("c", "evicted for a load on gpu1", sleep=True),
    )
    assert evictions(["b"], RAM) == (Unload("b", "evicted for a load on ram"),)


def test_only_a_gpu_frees_lazily_and_a_lost_process_freed_its_memory_already() -> None:
    assert memory_to_wait_for("gpu0", 8 * GiB, process_gone=False) == 8 * GiB
    assert memory_to_wait_for("gpu0", 8 * GiB, process_gone=True) == 0
    assert memory_to_wait_for(RAM, 8 * GiB, process_gone=False) == 0
    assert memory_is_back(8 * GiB, 10 * GiB) and not memory_is_back(7 * GiB, 10 * GiB)


# -- sleep or stop ---------------------------------------------------------------------


def test_a_victim_sleeps_when_host_ram_can_hold_its_weights() -> None:
    s = world(model("a", 10, state=S.UNLOADING), ram_free_gib=12)
    assert plan_sleep(s, "a", 8 * GiB) == Sleep("a", 10 * GiB)
    assert plan_sleep(s, "a", 11 * GiB) == Sleep("a", 11 * GiB)  # its figure, if larger


def test_a_victim_is_stopped_when_host_ram_is_short_and_the_reason_has_numbers() -> None:
    s = world(model("a", 10, state=S.UNLOADING), ram_free_gib=9.5)
    assert plan_sleep(s, "a", 0) == Stop(
        "a", "host RAM too short to hold it asleep (9.5 GiB free, up to 10.0 GiB needed)"
    )


ASLEEP_CASES = [
    (10 * GiB, GiB // 2, None),
    (10 * GiB, 5 * GiB, None),  # half is the most it may keep
    (10 * GiB, 5 * GiB + 1, "it said it sleeps but still holds 5.0 GiB of the GPU"),
    (0, 5 * GiB, None),  # nothing known held awake: nothing to compare
]


@pytest.mark.parametrize(("awake", "measured", "reason"), ASLEEP_CASES)
def test_a_sleep_is_believed_only_if_the_gpu_memory_went(
    awake: int, measured: int, reason: str | None
) -> None:
    verdict = asleep_check("a", awake, measured)
    assert verdict == (None if reason is None else Stop("a", reason))


# -- the re-plan after an out-of-memory load -------------------------------------------


def test_out_of_memory_evicts_one_more_in_lru_order_on_the_same_device() -> None:
    s = world(
        model("x", 4, state=S.UNLOADED),  # the failed model: left out
        model("a", 4, last_used=1),
        model("b", 4, last_used=2),
        model("p", 4, last_used=0, pinned=True),
    )
    request = LoadRequest("x", 4 * GiB, 0, True)
    assert plan_oom_retry(s, request, "gpu0") == Load("x", "gpu0", ("a",))


def test_out_of_memory_asks_for_half_as_much_again_or_a_gib_more_than_looked_free() -> None:
    lru = [model(n, 4, last_used=t) for t, n in enumerate("abc", start=1)]
    s = world(model("x", 8, state=S.UNLOADED), model("p", 10, pinned=True), *lru)
    # 2 GiB looked free and an 8 GiB load ran out: plan for 12 GiB, so all three go.
    retry = plan_oom_retry(s, LoadRequest("x", 8 * GiB, 0, True), "gpu0")
    assert retry == Load("x", "gpu0", ("a", "b", "c"))
    # A 1 GiB load asks for 2 GiB: one more than the 2 GiB that looked free.
    assert plan_oom_retry(s, LoadRequest("x", GiB, 0, True), "gpu0") == Load("x", "gpu0", ("a",))


def test_out_of_memory_with_nothing_to_evict_is_refused_with_the_reason() -> None:
    s = world(model("x", 4, state=S.UNLOADED), model("p", 4, pinned=True))
    refused = plan_oom_retry(s, LoadRequest("x", 4 * GiB, 0, True), "gpu0")
    assert isinstance(refused, Refuse) and refused.code == "out_of_memory"
    assert refused.reason.startswith("out of memory on gpu0, and no more room: x needs ")
    assert "pinned: p (4.0 GiB)" in refused.reason


def test_out_of_memory_waits_for_a_busy_model_rather_than_evict_it() -> None:
    s = world(model("x", 4, state=S.UNLOADED), model("b", 4, in_flight=1))
    refused = plan_oom_retry(s, LoadRequest("x", 4 * GiB, 0, True), "gpu0")
    assert refused == Refuse(
        "x",
        "out of memory on gpu0, and no more room: x fits once these are idle or gone: b",
        "out_of_memory",
    )


def test_out_of_memory_in_host_ram_asks_for_more_ram() -> None:
    cpu = model("c", 0, device=None, ram_bytes=8 * GiB, last_used=1)
    s = world(model("x", 0, state=S.UNLOADED), cpu, ram_free_gib=40)
    plan = plan_oom_retry(s, LoadRequest("x", 0, 4 * GiB, False), RAM)
    assert plan == Load("x", RAM, ("c",))


@st.composite
def oom_cases(draw: st.DrawFn) -> tuple[Snapshot, LoadRequest]:
    n = draw(st.integers(0, 6))
    times = draw(st.lists(st.integers(0, 100), min_size=n, max_size=n, unique=True))
    models = [model("x", 0, state=S.UNLOADED)]
    for i in range(n):
        models.append(
            model(
                f"m{i}",
                draw(st.integers(0, 6)),
                last_used=float(times[i]),
                state=draw(st.sampled_from([S.LOADED, S.LOADED, S.SLEEPING, S.LOADING])),
                pinned=draw(st.booleans()),
                in_flight=draw(st.sampled_from([0, 0, 1])),
            )
        )
    gib = sum(m.vram_bytes for m in models) // GiB
    s = world(*models, gpu_gib=gib + draw(st.integers(1, 8)))
    request = LoadRequest("x", draw(st.integers(1, 8)) * GiB, 0, True)
    return s, request


@settings(max_examples=400, deadline=None)
@given(oom_cases())
def test_an_oom_re_plan_names_at_least_one_idle_unpinned_victim_in_lru_order(
    case: tuple[Snapshot, LoadRequest],
) -> None:
    s, request = case
    plan = plan_oom_retry(s, request, "gpu0")
    if isinstance(plan, Refuse):
        assert plan.reason.startswith("out of memory on gpu0, and no more room: ")
        return
    assert plan.device == "gpu0" and plan.evict and "x" not in plan.evict
    victims = [s.models[v] for v in plan.evict]
    assert all(v.idle and not v.pinned and v.state != S.LOADING for v in victims)
    assert [v.last_used for v in victims] == sorted(v.last_used for v in victims)
    # Each victim gives back memory on the device the load failed on, and the room made
    # covers more than the request: the retry asks for what looked free and more.
    assert all(v.device == "gpu0" and v.vram_bytes > 0 for v in victims)
    room = free_bytes(s, s.gpus[0]) + sum(v.vram_bytes for v in victims)
    assert room > max(request.vram_bytes, free_bytes(s, s.gpus[0]))


# -- a refusal names numbers -----------------------------------------------------------


@st.composite
def refusals(draw: st.DrawFn) -> tuple[Snapshot, LoadRequest]:
    n = draw(st.integers(0, 4))
    models = [
        model(
            f"m{i}",
            draw(st.integers(1, 10)),
            pinned=draw(st.booleans()),
            in_flight=draw(st.sampled_from([0, 1])),
        )
        for i in range(n)
    ]
    s = world(*models, gpu_gib=draw(st.integers(4, 48)))
    return s, LoadRequest("new", draw(st.integers(1, 60)) * GiB, 0, True)


NUMBER = re.compile(r"\d+(\.\d)? (GiB|MiB)")


@settings(max_examples=400, deadline=None)
@given(refusals())
def test_a_refusal_names_what_is_needed_and_what_is_free(
    case: tuple[Snapshot, LoadRequest],
) -> None:
    s, request = case
    plan = plan_load(s, request)
    if not isinstance(plan, Refuse):
        return
    assert f"needs {format_bytes(request.vram_bytes)} on GPU0" in plan.reason
    assert len(NUMBER.findall(plan.reason)) >= 2, plan.reason
    assert "free" in plan.reason or "in all after its reserve" in plan.reason
