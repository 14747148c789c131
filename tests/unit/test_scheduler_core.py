"""The residency core, exhaustively: examples for the messages, hypothesis for the rules."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from helixd.scheduler.core import (
    RAM,
    DeviceView,
    Join,
    Load,
    LoadRequest,
    ModelState,
    ModelView,
    Ready,
    Refuse,
    Snapshot,
    Wait,
    free_bytes,
    plan_load,
    queue_is_full,
    resident_count,
)

GiB = 1024**3
MiB = 1024**2
HOLDING_STATES = (
    ModelState.LOADED,
    ModelState.LOADING,
    ModelState.UNLOADING,
    ModelState.SLEEPING,
)


def gpu(index: int = 0, total: int = 24 * GiB, used: int = 0, reserve: int = 0) -> DeviceView:
    return DeviceView(f"gpu{index}", total, reserve, total - used)


def ram(total: int = 64 * GiB, used: int = 0) -> DeviceView:
    return DeviceView(RAM, total, 0, total - used)


def loaded(name: str, vram_gib: float, last_used: float, **kw: object) -> ModelView:
    fields: dict[str, object] = {
        "state": ModelState.LOADED,
        "device": "gpu0",
        "vram_bytes": int(vram_gib * GiB),
        "ram_bytes": 0,
        "last_used": last_used,
    }
    fields.update(kw)
    return ModelView(name=name, **fields)  # type: ignore[arg-type]


def snap(*models: ModelView, gpus: tuple[DeviceView, ...] | None = None, **kw: object) -> Snapshot:
    used_by_models = sum(m.vram_bytes for m in models if m.device == "gpu0")
    devices = gpus if gpus is not None else (gpu(used=used_by_models),)
    return Snapshot(devices, ram(), {m.name: m for m in models}, **kw)  # type: ignore[arg-type]


def want(name: str, vram_gib: float) -> LoadRequest:
    return LoadRequest(name, int(vram_gib * GiB), 0, gpu=True)


def test_evicts_least_recently_used_idle_models_only_as_many_as_needed() -> None:
    s = snap(loaded("a", 8, 3.0), loaded("b", 8, 1.0), loaded("c", 6, 2.0))
    assert plan_load(s, want("x", 6)) == Load("x", "gpu0", ("b",))
    assert plan_load(s, want("x", 12)) == Load("x", "gpu0", ("b", "c"))


def test_pinned_and_busy_models_are_never_victims() -> None:
    s = snap(
        loaded("pin", 8, 0.0, pinned=True),
        loaded("busy", 8, 1.0, in_flight=1),
        loaded("waiting", 4, 2.0, queued=2),
        loaded("idle", 4, 9.0),
    )
    assert plan_load(s, want("x", 4)) == Load("x", "gpu0", ("idle",))
    plan = plan_load(s, want("x", 10))
    assert isinstance(plan, Wait)
    assert plan.waiting_for == ("busy", "waiting")


def test_refusal_names_pins_and_busy_models() -> None:
    s = snap(
        loaded("openhermes", 4.1, 0.0, pinned=True),
        loaded("mathstral", 4.4, 0.0, pinned=True),
        loaded("codellama-13b", 12.4, 1.0, in_flight=1),
        gpus=(DeviceView("gpu0", 24 * GiB, 0, int(3.1 * GiB)),),
    )
    plan = plan_load(s, want("qwen2.5-coder-32b", 19.4))
    assert plan == Refuse(
        "qwen2.5-coder-32b",
        "qwen2.5-coder-32b needs 19.4 GiB on GPU0; 3.1 GiB free; "
        "pinned: mathstral (4.4 GiB), openhermes (4.1 GiB); busy: codellama-13b",
    )


def test_a_model_bigger_than_the_device_is_refused_with_the_device_size() -> None:
    plan = plan_load(snap(gpus=(gpu(total=8 * GiB, reserve=512 * MiB),)), want("big", 9))
    assert isinstance(plan, Refuse)
    assert "needs 9.0 GiB on GPU0, which has 7.5 GiB in all after its reserve" in plan.reason


def test_loaded_is_ready_loading_is_joined_unloading_waits() -> None:
    s = snap(
        loaded("up", 1, 0.0),
        loaded("coming", 1, 0.0, state=ModelState.LOADING),
        loaded("going", 1, 0.0, state=ModelState.UNLOADING),
    )
    assert plan_load(s, want("up", 1)) == Ready("up")
    assert plan_load(s, want("coming", 1)) == Join("coming")
    assert isinstance(plan_load(s, want("going", 1)), Wait)


def test_placement_prefers_the_device_with_most_free_memory() -> None:
    s = snap(gpus=(gpu(0, used=10 * GiB), gpu(1, used=2 * GiB)))
    assert plan_load(s, want("x", 4)) == Load("x", "gpu1")


def test_a_device_with_a_load_under_way_is_skipped_or_waited_for() -> None:
    s = snap(gpus=(gpu(0), gpu(1, used=20 * GiB)), loading_devices=frozenset({"gpu0"}))
    assert plan_load(s, want("x", 2)) == Load("x", "gpu1")
    plan = plan_load(s, want("x", 8))
    assert isinstance(plan, Wait) and plan.waiting_for == ("gpu0",)


def test_reported_free_memory_limits_the_budget_when_others_use_the_gpu() -> None:
    # NVML says 20 GiB are used by someone else: helixd's own accounting alone would say 24.
    s = snap(gpus=(gpu(used=20 * GiB, reserve=1 * GiB),))
    assert free_bytes(s, s.gpus[0]) == 3 * GiB
    assert isinstance(plan_load(s, want("x", 4)), Refuse)


def test_a_loading_model_counts_before_its_memory_shows_up() -> None:
    # The load has not allocated yet (NVML shows nothing): the account still holds its size.
    coming = loaded("coming", 16, 0.0, state=ModelState.LOADING)
    s = snap(coming, gpus=(gpu(used=0),))
    assert isinstance(plan_load(s, want("x", 10)), Wait)


def test_max_loaded_models_evicts_the_least_recently_used() -> None:
    s = snap(loaded("a", 1, 5.0), loaded("b", 1, 2.0), max_loaded_models=2)
    assert plan_load(s, want("x", 1)) == Load("x", "gpu0", ("b",))
    pinned = snap(
        loaded("a", 1, 5.0, pinned=True), loaded("b", 1, 2.0, pinned=True), max_loaded_models=2
    )
    plan = plan_load(pinned, want("x", 1))
    assert isinstance(plan, Refuse) and "max_loaded_models = 2" in plan.reason


def test_ram_only_mode_charges_the_whole_model_to_host_memory() -> None:
    models = {
        "old": ModelView("old", ModelState.LOADED, None, 0, 6 * GiB, last_used=1.0),
    }
    s = Snapshot((), DeviceView(RAM, 16 * GiB, 2 * GiB, 8 * GiB), models)
    # 8 GiB reported free - 2 reserve = 6: a 3 + 2 GiB model fits; a 5 + 2 needs "old" gone.
    assert plan_load(s, LoadRequest("x", 3 * GiB, 2 * GiB, gpu=False)) == Load("x", RAM)
    assert plan_load(s, LoadRequest("x", 5 * GiB, 2 * GiB, gpu=False)) == Load("x", RAM, ("old",))
    assert isinstance(plan_load(s, LoadRequest("x", 1, 0, gpu=True)), Refuse)


def test_a_sleeping_model_wakes_on_its_own_gpu_asking_only_for_what_waking_adds() -> None:
    asleep = loaded("deep", 0.5, 1.0, state=ModelState.SLEEPING, device="gpu1", ram_bytes=8 * GiB)
    gpus = (gpu(0), gpu(1, used=int(23.5 * GiB)))
    s = snap(asleep, loaded("other", 23, 0.0, device="gpu1"), gpus=gpus)
    wake = LoadRequest("deep", int(7.5 * GiB), 0, gpu=True, device="gpu1")
    # gpu0 is empty, but the sleeping process lives on gpu1: it wakes there.
    assert plan_load(s, wake) == Load("deep", "gpu1", ("other",))


def test_sleeping_models_are_evicted_for_room_but_not_counted_as_loaded() -> None:
    asleep = ModelView("nap", ModelState.SLEEPING, "gpu0", GiB // 2, 30 * GiB, last_used=5.0)
    s = Snapshot((gpu(used=GiB // 2),), ram(total=40 * GiB), {"nap": asleep}, max_loaded_models=1)
    assert plan_load(s, want("x", 4)) == Load("x", "gpu0")  # sleeping: not counted
    big_ram = LoadRequest("y", 0, 20 * GiB, gpu=False)
    assert plan_load(s, big_ram) == Load("y", RAM, ("nap",))  # its host RAM is taken back


def test_a_one_model_server_swaps_its_model_and_a_pinned_one_blocks_the_swap() -> None:
    s = snap(loaded("t1", 4, 9.0), loaded("old", 4, 1.0))
    swap = LoadRequest("t2", 4 * GiB, 0, gpu=True, exclusive=frozenset({"t1"}))
    assert plan_load(s, swap) == Load("t2", "gpu0", ("t1",))  # not the older "old"
    busy = snap(loaded("t1", 4, 9.0, in_flight=1))
    plan = plan_load(busy, swap)
    assert isinstance(plan, Wait) and plan.busy
    pinned = snap(loaded("t1", 4, 9.0, pinned=True))
    refused = plan_load(pinned, swap)
    assert isinstance(refused, Refuse)
    assert "holds one model at a time and t1 is pinned" in refused.reason


# -- properties --------------------------------------------------------------------------

STATES = [ModelState.LOADED] * 4 + [
    ModelState.LOADING,
    ModelState.UNLOADING,
    ModelState.UNLOADED,
    ModelState.SLEEPING,
]
HELD = (ModelState.LOADED, ModelState.UNLOADING, ModelState.SLEEPING)


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[Snapshot, LoadRequest]:
    n_gpus = draw(st.integers(1, 2))
    totals = [draw(st.integers(4, 48)) * GiB for _ in range(n_gpus)]
    reserves = [draw(st.sampled_from([0, 512 * MiB, GiB])) for _ in range(n_gpus)]
    others = [draw(st.integers(0, 2)) * GiB for _ in range(n_gpus)]  # not helixd's
    n_models = draw(st.integers(0, 8))
    times = draw(st.lists(st.integers(0, 1000), min_size=n_models, max_size=n_models, unique=True))
    models: dict[str, ModelView] = {}
    for i in range(n_models):
        models[f"m{i}"] = ModelView(
            name=f"m{i}",
            state=draw(st.sampled_from(STATES)),
            device=f"gpu{draw(st.integers(0, n_gpus - 1))}",
            vram_bytes=draw(st.integers(0, 12)) * GiB,
            ram_bytes=draw(st.integers(0, 2)) * GiB,
            pinned=draw(st.booleans()),
            in_flight=draw(st.sampled_from([0, 0, 0, 1, 3])),
            queued=draw(st.sampled_from([0, 0, 0, 2])),
            last_used=float(times[i]),
        )
    gpus = []
    for i in range(n_gpus):
        held = sum(
            m.vram_bytes for m in models.values() if m.device == f"gpu{i}" and m.state in HELD
        )
        gpus.append(DeviceView(f"gpu{i}", totals[i], reserves[i], totals[i] - held - others[i]))
    ram_total = draw(st.integers(8, 64)) * GiB
    ram_used = sum(m.ram_bytes for m in models.values() if m.state in HELD)
    host = DeviceView(RAM, ram_total, GiB, ram_total - ram_used - GiB)
    max_loaded = draw(st.sampled_from([0, 0, 2, 4]))
    device_ids = [g.id for g in gpus] + [RAM]
    loading = frozenset(draw(st.lists(st.sampled_from(device_ids), max_size=2)))
    snapshot = Snapshot(tuple(gpus), host, models, max_loaded, loading)
    name = draw(st.sampled_from(["new", *models])) if models else "new"
    own = models.get(name)
    others = sorted(set(models) - {name})
    exclusive = frozenset(draw(st.lists(st.sampled_from(others), max_size=2))) if others else None
    request = LoadRequest(
        model=name,
        vram_bytes=draw(st.integers(0, 30)) * GiB,
        ram_bytes=draw(st.integers(0, 4)) * GiB,
        gpu=draw(st.sampled_from([True, True, True, False])),
        exclusive=exclusive or frozenset(),
    )
    if own is not None and own.state == ModelState.SLEEPING:  # wakes where it sleeps
        request = dataclasses.replace(request, gpu=True, device=own.device)
    return snapshot, request


def _forced(snapshot: Snapshot, request: LoadRequest) -> set[str]:
    """The exclusive models that hold memory: they must all leave first."""
    return {
        n
        for n in request.exclusive
        if n in snapshot.models and snapshot.models[n].state in HOLDING_STATES
    }


def _after_evicting(snapshot: Snapshot, victims: tuple[str, ...]) -> Snapshot:
    """The world once the victims' memory came back, as NVML would then report it."""
    models = dict(snapshot.models)
    gpus = list(snapshot.gpus)
    host = snapshot.ram
    for name in victims:
        m = models[name]
        models[name] = dataclasses.replace(m, state=ModelState.UNLOADED)
        gpus = [
            dataclasses.replace(g, reported_free_bytes=g.reported_free_bytes + m.vram_bytes)
            if g.id == m.device
            else g
            for g in gpus
        ]
        host = dataclasses.replace(host, reported_free_bytes=host.reported_free_bytes + m.ram_bytes)
    return dataclasses.replace(snapshot, gpus=tuple(gpus), ram=host, models=models)


def _fits(snapshot: Snapshot, request: LoadRequest, device: str) -> bool:
    count_ok = (
        not snapshot.max_loaded_models or resident_count(snapshot) < snapshot.max_loaded_models
    )
    if device == RAM:  # no GPU: the whole model lives in host memory
        need = request.vram_bytes + request.ram_bytes
        return free_bytes(snapshot, snapshot.ram) >= need and count_ok
    gpu_view = next(g for g in snapshot.gpus if g.id == device)
    return (
        free_bytes(snapshot, gpu_view) >= request.vram_bytes
        and free_bytes(snapshot, snapshot.ram) >= request.ram_bytes
        and count_ok
    )


def _devices_for(snapshot: Snapshot, request: LoadRequest) -> list[str]:
    found = [g.id for g in snapshot.gpus] if request.gpu else [RAM]
    return [d for d in found if request.device in (None, d)]


@settings(max_examples=400, deadline=None)
@given(snapshots())
def test_victims_are_idle_unpinned_loaded_models_in_lru_order(
    case: tuple[Snapshot, LoadRequest],
) -> None:
    snapshot, request = case
    plan = plan_load(snapshot, request)
    if not isinstance(plan, Load):
        return
    victims = [snapshot.models[v] for v in plan.evict]
    forced = _forced(snapshot, request)
    assert request.model not in plan.evict
    for v in victims:
        assert not v.pinned, f"evicted pinned {v.name}"
        assert v.idle, f"evicted busy {v.name}"
        assert v.state in (ModelState.LOADED, ModelState.SLEEPING), f"evicted {v.state} {v.name}"
    assert forced <= set(plan.evict), "a model its server cannot hold beside it stays"
    chosen = [v.last_used for v in victims if v.name not in forced]
    assert chosen == sorted(chosen)


@settings(max_examples=400, deadline=None)
@given(snapshots())
def test_plans_never_exceed_a_budget_and_evict_no_more_than_needed(
    case: tuple[Snapshot, LoadRequest],
) -> None:
    snapshot, request = case
    plan = plan_load(snapshot, request)
    if not isinstance(plan, Load):
        return
    assert _fits(_after_evicting(snapshot, plan.evict), request, plan.device)
    if plan.evict and plan.evict[-1] not in _forced(snapshot, request):
        assert not _fits(_after_evicting(snapshot, plan.evict[:-1]), request, plan.device)


@settings(max_examples=400, deadline=None)
@given(snapshots())
def test_refuse_only_when_no_unpinned_model_could_make_room(
    case: tuple[Snapshot, LoadRequest],
) -> None:
    snapshot, request = case
    plan = plan_load(snapshot, request)
    unpinned = tuple(
        m.name
        for m in snapshot.models.values()
        if not m.pinned and m.state in HOLDING_STATES and m.name != request.model
    )
    everything_gone = _after_evicting(snapshot, unpinned)
    could_fit = any(_fits(everything_gone, request, d) for d in _devices_for(snapshot, request))
    pinned_beside = any(snapshot.models[n].pinned for n in _forced(snapshot, request))
    if isinstance(plan, Refuse):
        assert not could_fit or pinned_beside, plan.reason
    own = snapshot.models.get(request.model)
    waits_for_itself = own is not None and own.state == ModelState.UNLOADING
    if isinstance(plan, Load | Wait) and not waits_for_itself:
        assert could_fit and not pinned_beside, plan


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_a_load_never_goes_to_a_device_with_a_load_under_way(
    case: tuple[Snapshot, LoadRequest],
) -> None:
    snapshot, request = case
    plan = plan_load(snapshot, request)
    if isinstance(plan, Load):
        assert plan.device not in snapshot.loading_devices
        assert plan.device in _devices_for(snapshot, request)


@settings(max_examples=200, deadline=None)
@given(snapshots())
def test_a_second_request_for_a_model_being_loaded_joins_that_load(
    case: tuple[Snapshot, LoadRequest],
) -> None:
    snapshot, request = case
    plan = plan_load(snapshot, request)
    if not isinstance(plan, Load):
        return
    # What the executor records when it starts the load: the model is loading, victims leave.
    models = dict(snapshot.models)
    for name in plan.evict:
        models[name] = dataclasses.replace(models[name], state=ModelState.UNLOADING)
    models[request.model] = ModelView(
        request.model, ModelState.LOADING, plan.device, request.vram_bytes, request.ram_bytes
    )
    after = dataclasses.replace(
        snapshot, models=models, loading_devices=snapshot.loading_devices | {plan.device}
    )
    assert plan_load(after, request) == Join(request.model)


def test_a_sleeping_model_is_kept_when_an_awake_victim_alone_makes_the_room() -> None:
    asleep = loaded("nap", 0.5, 1.0, state=ModelState.SLEEPING, ram_bytes=8 * GiB)
    s = snap(asleep, loaded("big", 20, 2.0))
    assert plan_load(s, want("x", 20)) == Load("x", "gpu0", ("big",))
    refusal = plan_load(snap(asleep, loaded("p", 22, 2.0, pinned=True)), want("x", 3))
    assert isinstance(refusal, Refuse)
    assert refusal.reason == "x needs 3.0 GiB on GPU0; 1.5 GiB free; pinned: p (22.0 GiB)"


def test_requests_waiting_for_free_slots_are_not_counted_against_max_queue() -> None:
    # A cold model, max_concurrency 1, max_queue 1: the first request waits for the load
    # in the one slot, the second queues, the third is refused.
    assert not queue_is_full(in_flight=0, waiting=0, max_concurrency=1, max_queue=1)
    assert not queue_is_full(in_flight=0, waiting=1, max_concurrency=1, max_queue=1)
    assert queue_is_full(in_flight=0, waiting=2, max_concurrency=1, max_queue=1)
    # Loaded and busy: every waiter is queued.
    assert queue_is_full(in_flight=1, waiting=1, max_concurrency=1, max_queue=1)
    # max_queue = 0: only as many as there are slots.
    assert not queue_is_full(in_flight=2, waiting=1, max_concurrency=4, max_queue=0)
    assert queue_is_full(in_flight=2, waiting=2, max_concurrency=4, max_queue=0)


@given(
    in_flight=st.integers(0, 8),
    waiting=st.integers(0, 20),
    max_concurrency=st.integers(1, 8),
    max_queue=st.integers(0, 8),
)
def test_accepted_requests_never_exceed_slots_plus_queue(
    in_flight: int, waiting: int, max_concurrency: int, max_queue: int
) -> None:
    if not queue_is_full(in_flight, waiting, max_concurrency, max_queue):
        # Accepting one more keeps everyone within the slots and the queue.
        assert in_flight + waiting + 1 <= max(in_flight, max_concurrency) + max_queue
