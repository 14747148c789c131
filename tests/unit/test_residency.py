"""The residency executor with a fake adapter, a fake monitor and an injected clock.

The fakes keep the books a GPU would: a loaded model takes its size on its device until
it is unloaded. No sleeps: tests advance the clock and call ``tick()``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from helixd.config import ModelConfig, ResourcesConfig, SchedulerConfig
from helixd.providers.base import LoadError, ModelAdapter, ModelTarget
from helixd.resources.gpu import GpuDevice
from helixd.resources.monitor import ResourceSample
from helixd.resources.ram import HostMemory
from helixd.scheduler.core import ModelState
from helixd.scheduler.entry import ModelEntry
from helixd.scheduler.events import Event, LoadEnded
from helixd.scheduler.residency import Residency, ResidencyError
from helixd.scheduler.sizing import MemoryFigure

GiB = 1024**3


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeAdapter(ModelAdapter):
    """Loads 'succeed' once released by the test (or at once); sizes land on the device."""

    shape = "process-per-model"

    def __init__(self, gpu: FakeGpu) -> None:
        super().__init__("fake")
        self.gpu = gpu
        self.loads: list[tuple[str, int | None]] = []
        self.unloads: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail_next: list[LoadError] = []
        self.active_loads: dict[int | None, int] = {}
        self.max_parallel: dict[int | None, int] = {}

    async def load(self, target: ModelTarget) -> None:
        self.loads.append((target.name, target.gpu_index))
        dev = target.gpu_index
        self.active_loads[dev] = self.active_loads.get(dev, 0) + 1
        self.max_parallel[dev] = max(self.max_parallel.get(dev, 0), self.active_loads[dev])
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_next:
                raise self.fail_next.pop(0)
            self.gpu.held[target.name] = (dev or 0, self.gpu.sizes[target.name])
        finally:
            self.active_loads[dev] -= 1

    async def unload(self, model: str) -> None:
        self.unloads.append(model)
        held = self.gpu.held.pop(model, None)
        if held is not None and self.gpu.lazy_reads:
            self.gpu.freeing.append([held[0], held[1], self.gpu.lazy_reads])

    def upstream(self, model: str) -> str | None:
        return "http://127.0.0.1:1" if model in self.gpu.held else None

    async def reported_memory(self, model: str) -> tuple[int, int] | None:
        held = self.gpu.held.get(model)
        return (held[1], 0) if held else None

    async def close(self) -> None:
        self.gpu.held.clear()


class FakeGpu:
    """A monitor over N fake GPUs of ``total`` bytes; 'held' is what loaded models take."""

    def __init__(self, n: int = 1, total: int = 24 * GiB) -> None:
        self.n = n
        self.total = total
        self.held: dict[str, tuple[int, int]] = {}
        self.sizes: dict[str, int] = {}
        # Memory of unloaded models that the "driver" frees only after this many reads.
        self.lazy_reads = 0
        self.freeing: list[list[Any]] = []

    async def sample(self) -> ResourceSample:
        for item in self.freeing:
            item[2] -= 1
        self.freeing = [item for item in self.freeing if item[2] > 0]
        gpus = []
        for i in range(self.n):
            used = sum(size for dev, size in self.held.values() if dev == i)
            used += sum(size for dev, size, _ in self.freeing if dev == i)
            gpus.append(GpuDevice(i, "fake", f"GPU-{i}", self.total, used, self.total - used))
        return ResourceSample(
            tuple(gpus), HostMemory(64 * GiB, 60 * GiB), "nvml", "", {}, time.monotonic()
        )

    async def tree_usage(self, pid: int) -> tuple[int, dict[int, int]]:
        return 0, {}


def make(
    sizes: dict[str, float],
    pinned: set[str] = frozenset(),  # type: ignore[assignment]
    n_gpus: int = 1,
    **scheduler: Any,
) -> tuple[Residency, FakeAdapter, FakeGpu, FakeClock]:
    gpu = FakeGpu(n_gpus)
    adapter = FakeAdapter(gpu)
    clock = FakeClock()
    sched = SchedulerConfig.model_validate(
        {"keep_alive": "10m", "memory_return_s": 1, "failed_cooldown_s": 30, **scheduler}
    )
    residency = Residency(
        ResourcesConfig(vram_reserve_mib=0, ram_reserve_mib=0), sched, gpu, clock=clock
    )
    for name, gib in sizes.items():
        gpu.sizes[name] = int(gib * GiB)
        residency.add(
            ModelEntry(
                name=name,
                config=ModelConfig(provider="fake", vram_mib=int(gib * 1024)),
                adapter=adapter,
                figure=MemoryFigure(int(gib * GiB), 0, "declared"),
                size_key=name,
                pinned_by_config=name in pinned,
            )
        )
    return residency, adapter, gpu, clock


async def settled(residency: Residency, name: str, state: ModelState) -> None:
    """Wait (on change events, bounded) until ``name`` is in ``state``."""
    async with asyncio.timeout(10):
        while residency.view(name).state != state:
            await residency.wait_changed(1)


class Holding:
    """A long request on a model: in flight until ``release()``."""

    def __init__(self, residency: Residency, name: str) -> None:
        self.release_event = asyncio.Event()
        self.task = asyncio.create_task(self._hold(residency, name))

    async def _hold(self, residency: Residency, name: str) -> None:
        async with residency.lease(name):
            await self.release_event.wait()

    async def release(self) -> None:
        self.release_event.set()
        await self.task


async def holding(residency: Residency, name: str) -> Holding:
    """Start a long request on ``name`` and wait until it is in flight."""
    held = Holding(residency, name)
    async with asyncio.timeout(10):
        while residency.view(name).in_flight == 0:
            await residency.wait_changed(1)
    return held


async def use_once(residency: Residency, name: str, clock: FakeClock) -> None:
    clock.now += 1
    async with residency.lease(name):
        pass


async def test_concurrent_requests_for_an_unloaded_model_share_one_load() -> None:
    residency, adapter, _, clock = make({"a": 4})
    adapter.gate = asyncio.Event()
    users = [asyncio.create_task(use_once(residency, "a", clock)) for _ in range(5)]
    while residency.view("a").state != ModelState.LOADING:
        await residency.wait_changed(1)
    assert residency.view("a").queued == 5
    adapter.gate.set()
    await asyncio.gather(*users)
    assert adapter.loads == [("a", 0)]
    assert residency.view("a").state == ModelState.LOADED


async def test_least_recently_used_idle_model_is_evicted() -> None:
    residency, adapter, _, clock = make({"a": 10, "b": 10, "c": 10})
    await use_once(residency, "a", clock)
    await use_once(residency, "b", clock)
    await use_once(residency, "a", clock)  # now b is the least recently used
    await use_once(residency, "c", clock)
    assert adapter.unloads == ["b"]
    states = {n: e.state for n, e in residency._ledger.entries.items()}
    assert states == {"a": "loaded", "b": "unloaded", "c": "loaded"}
    assert residency.view("b").message == "evicted for a load on gpu0"


async def test_pinned_model_survives_and_impossible_request_is_refused_with_reasons() -> None:
    residency, adapter, _, clock = make({"router": 8, "big": 20, "small": 10}, pinned={"router"})
    await residency.tick()
    while residency.view("router").state != ModelState.LOADED:
        await residency.wait_changed(1)
    await use_once(residency, "small", clock)
    with pytest.raises(ResidencyError) as refused:
        await use_once(residency, "big", clock)
    assert refused.value.status == 507
    assert str(refused.value) == (
        "big needs 20.0 GiB on GPU0; 6.0 GiB free; pinned: router (8.0 GiB)"
    )
    assert "router" not in adapter.unloads
    assert residency.view("small").state == ModelState.LOADED  # nothing evicted in vain


async def test_a_busy_model_is_waited_for_not_evicted() -> None:
    residency, adapter, _, clock = make({"a": 16, "b": 16}, busy_wait_s=60)
    holder = await holding(residency, "a")
    waiter = asyncio.create_task(use_once(residency, "b", clock))
    while residency.view("b").queued == 0:
        await residency.wait_changed(1)
    assert adapter.unloads == [] and not waiter.done()
    await holder.release()
    await waiter
    assert adapter.unloads == ["a"]


async def test_idle_model_unloads_after_keep_alive_but_not_while_busy_or_pinned() -> None:
    residency, _, _, clock = make({"a": 2, "p": 2}, pinned={"p"}, keep_alive="60s")
    await use_once(residency, "a", clock)
    await residency.load("p")
    clock.now += 59
    await residency.tick()
    assert residency.view("a").state == ModelState.LOADED
    clock.now += 2
    await residency.tick()
    assert residency.view("a").state == ModelState.UNLOADING  # booked at once, in a task
    await settled(residency, "a", ModelState.UNLOADED)
    assert residency.view("a").message == "idle for 60 s (keep_alive)"
    assert residency.view("p").state == ModelState.LOADED
    # The timer runs only while idle: a long request keeps the model, its end restarts it.
    task = await holding(residency, "a")
    clock.now += 3600
    await residency.tick()
    assert residency.view("a").state == ModelState.LOADED
    await task.release()
    clock.now += 30
    await residency.tick()
    assert residency.view("a").state == ModelState.LOADED


async def test_out_of_memory_load_evicts_more_and_retries_once_then_fails_with_cooldown() -> None:
    residency, adapter, _, clock = make({"a": 4, "b": 4, "x": 4})
    outcomes: list[tuple[str, str | None, bool]] = []

    def outcome(event: Event) -> None:
        if isinstance(event, LoadEnded):
            outcomes.append((event.model, event.error, event.out_of_memory))

    residency.events.subscribe(outcome)
    await use_once(residency, "a", clock)
    await use_once(residency, "b", clock)
    adapter.fail_next = [LoadError("CUDA out of memory", out_of_memory=True)]
    await use_once(residency, "x", clock)
    assert outcomes[-1] == ("x", None, False)  # the retry worked: no alert
    assert adapter.unloads == ["a"]  # the least recently used went on the retry
    assert [name for name, _ in adapter.loads] == ["a", "b", "x", "x"]
    # Two OOMs in a row: failed, with a cooldown during which requests fail fast.
    await residency.unload("x")
    adapter.fail_next = [LoadError("CUDA out of memory", out_of_memory=True)] * 2
    with pytest.raises(ResidencyError):
        await use_once(residency, "x", clock)
    assert residency.view("x").state == ModelState.FAILED
    assert outcomes[-1][0] == "x" and outcomes[-1][2] is True  # the gpu_oom alert's cue
    loads_before = len(adapter.loads)
    with pytest.raises(ResidencyError) as fast:
        await use_once(residency, "x", clock)
    assert fast.value.code == "model_failed" and len(adapter.loads) == loads_before
    clock.now += 31
    await use_once(residency, "x", clock)
    assert residency.view("x").state == ModelState.LOADED


async def test_loads_are_serialised_per_device_and_parallel_across_devices() -> None:
    residency, adapter, _, clock = make({"a": 4, "b": 4, "c": 4, "d": 4}, n_gpus=2)
    adapter.gate = asyncio.Event()
    users = [asyncio.create_task(use_once(residency, n, clock)) for n in "abcd"]
    while sum(e.state == ModelState.LOADING for e in residency._ledger.entries.values()) < 2:
        await residency.wait_changed(1)
    adapter.gate.set()
    await asyncio.gather(*users)
    assert adapter.max_parallel == {0: 1, 1: 1}
    assert {gpu for _, gpu in adapter.loads} == {0, 1}


async def test_a_lost_pinned_model_is_loaded_again() -> None:
    residency, adapter, gpu, _ = make({"p": 4}, pinned={"p"})
    await residency.load("p")
    gpu.held.clear()
    adapter._lost("p", "exited with code 1")
    while residency.view("p").state != ModelState.UNLOADED:
        await residency.wait_changed(1)
    assert residency.view("p").message == "lost: exited with code 1"
    await residency.tick()
    while residency.view("p").state != ModelState.LOADED:
        await residency.wait_changed(1)
    assert [name for name, _ in adapter.loads] == ["p", "p"]


async def test_explicit_unload_refuses_pinned_and_busy_models() -> None:
    residency, _, _, _ = make({"p": 1, "a": 1}, pinned={"p"})
    await residency.load("p")
    with pytest.raises(ResidencyError, match="unpin it first"):
        await residency.unload("p")
    task = await holding(residency, "a")
    with pytest.raises(ResidencyError, match="busy"):
        await residency.unload("a")
    await task.release()
    await residency.unload("a")
    assert residency.view("a").state == ModelState.UNLOADED
    with pytest.raises(ResidencyError, match="no model named 'nope'; models: a, p"):
        await residency.unload("nope")


async def test_waiting_for_a_load_on_the_device_is_bounded_by_the_load_timeout_only() -> None:
    # A vLLM load takes minutes: a second model queued behind it on the same GPU must not
    # give up after busy_wait_s, which bounds waiting for *requests* to finish.
    residency, adapter, _, clock = make({"a": 4, "b": 4}, busy_wait_s=1, load_timeout_s=600)
    adapter.gate = asyncio.Event()
    first = asyncio.create_task(use_once(residency, "a", clock))
    while residency.view("a").state != ModelState.LOADING:
        await residency.wait_changed(1)
    second = asyncio.create_task(use_once(residency, "b", clock))
    while residency.view("b").queued == 0:
        await residency.wait_changed(1)
    clock.now += 120  # far past busy_wait_s
    residency.set_pin("a", False)  # any change wakes the waiters to plan again
    await asyncio.sleep(0)
    assert not second.done()
    adapter.gate.set()
    await asyncio.gather(first, second)
    assert [name for name, _ in adapter.loads] == ["a", "b"]


async def test_a_load_after_eviction_waits_for_the_memory_but_not_for_ever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A driver that never gives the memory back (a zombie context): the next load goes
    # ahead after memory_return_s instead of hanging, and says so in the log.
    residency, adapter, gpu, clock = make({"a": 16, "b": 16}, memory_return_s="300ms")
    await use_once(residency, "a", clock)
    stuck = dict(gpu.held)

    async def unload_that_frees_nothing(model: str) -> None:
        adapter.unloads.append(model)

    adapter.unload = unload_that_frees_nothing  # type: ignore[method-assign]
    gpu.held = stuck
    adapter.fail_next = [LoadError("CUDA out of memory", out_of_memory=False)]
    with pytest.raises(ResidencyError, match="CUDA out of memory"):
        await use_once(residency, "b", clock)
    assert adapter.unloads == ["a", "b"]  # a evicted; what b's failed load started, stopped
    assert "memory of unloaded models on gpu0 not back after 0.3 s; going on" in caplog.text


async def test_a_request_that_waited_across_a_reload_removing_its_model_gets_404() -> None:
    residency, adapter, _, clock = make({"a": 16, "b": 16}, busy_wait_s=60)
    holder = await holding(residency, "a")
    waiter = asyncio.create_task(use_once(residency, "b", clock))
    while residency.view("b").queued == 0:
        await residency.wait_changed(1)
    keep = {"a": residency._ledger.entries["a"]}
    residency.replace_config(residency.resources, residency.scheduler, keep)
    with pytest.raises(ResidencyError) as gone:
        await waiter
    assert gone.value.status == 404 and "removed from the config" in str(gone.value)
    await holder.release()
    assert residency.find("b") is None and [n for n, _ in adapter.loads] == ["a"]


async def test_a_load_cancelled_mid_eviction_leaves_no_model_stuck() -> None:
    residency, adapter, gpu, clock = make({"a": 8, "b": 8, "big": 20})
    await use_once(residency, "a", clock)
    await use_once(residency, "b", clock)
    gate, stopping = asyncio.Event(), asyncio.Event()
    real_unload = adapter.unload

    async def slow_unload(model: str) -> None:
        stopping.set()
        await gate.wait()
        await real_unload(model)

    adapter.unload = slow_unload  # type: ignore[method-assign]
    loader = asyncio.create_task(residency.load("big"))
    async with asyncio.timeout(10):
        await stopping.wait()  # a's process is being stopped
    assert residency.view("b").state == ModelState.UNLOADING  # both booked as victims
    task = residency._ledger.entries["big"].load_task
    assert task is not None
    task.cancel()  # helixd stopping, say: the unload under way still completes
    loader.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await loader
    await settled(residency, "big", ModelState.UNLOADED)
    states = {n: e.state for n, e in residency._ledger.entries.items()}
    # a was being stopped: it is gone; b was never reached: it is resident still.
    assert states == {"a": "unloaded", "b": "loaded", "big": "unloaded"}
    assert "a" not in gpu.held and "b" in gpu.held


async def test_no_load_starts_once_residency_is_closed() -> None:
    residency, adapter, _, clock = make({"a": 4})
    await residency.close()
    with pytest.raises(ResidencyError) as stopping:
        await use_once(residency, "a", clock)
    assert stopping.value.code == "stopping" and adapter.loads == []


async def test_a_pinned_model_gets_one_pending_load_however_many_passes_run() -> None:
    residency, _, _, _ = make({"hog": 20, "p": 8}, pinned={"p"}, busy_wait_s=600)
    holder = await holding(residency, "hog")
    for _ in range(20):
        await residency.tick()
        await asyncio.sleep(0)
    assert residency.view("p").queued == 1  # one waiting load, not twenty
    await holder.release()
    await settled(residency, "p", ModelState.LOADED)


async def test_a_model_that_dies_while_being_measured_is_failed_not_loaded() -> None:
    residency, _, gpu, clock = make({"a": 4})
    real_measure = residency._measure

    async def die_while_measuring(entry: ModelEntry) -> None:
        gpu.held.pop("a")  # the process exits; the adapter no longer serves it
        await real_measure(entry)

    residency._measure = die_while_measuring  # type: ignore[method-assign]
    with pytest.raises(ResidencyError, match="stopped right after it became ready"):
        await use_once(residency, "a", clock)
    assert residency.view("a").state == ModelState.FAILED


async def test_an_unload_holds_the_room_until_the_driver_frees_it() -> None:
    # NVML shows an unloaded model's memory for a few reads more: the next load must not
    # be refused on that stale figure.
    residency, _, gpu, clock = make({"a": 16, "b": 16}, memory_return_s=5)
    gpu.lazy_reads = 3
    await use_once(residency, "a", clock)
    await residency.unload("a")
    await use_once(residency, "b", clock)
    assert residency.view("b").state == ModelState.LOADED


async def test_bounded_waits_answer_504_and_a_full_queue_503() -> None:
    residency, _, _, clock = make({"a": 16, "b": 16}, busy_wait_s=1)
    holder = await holding(residency, "a")
    residency._ledger.entries["a"].config = ModelConfig(
        provider="fake", vram_mib=16384, max_queue=0, max_concurrency=1
    )
    with pytest.raises(ResidencyError) as full:
        await use_once(residency, "a", clock)
    assert full.value.status == 503 and full.value.code == "queue_full"
    waiter = asyncio.create_task(use_once(residency, "b", clock))
    while residency.view("b").queued == 0:
        await residency.wait_changed(1)
    clock.now += 5  # past busy_wait_s
    residency.set_pin("b", False)  # a change: the waiter plans again, and gives up
    with pytest.raises(ResidencyError) as waited:
        await waiter
    assert waited.value.status == 504 and "waited for room" in str(waited.value)
    await holder.release()


# -- sleep mode (vLLM) and one-model servers (TabbyAPI) ---------------------------------

RESIDUAL = GiB // 2


class SleepyAdapter(FakeAdapter):
    """vLLM's sleep mode in miniature: asleep, a model keeps RESIDUAL on the GPU and its
    weights in host RAM (its process tree's RSS); waking takes the GPU memory back."""

    def __init__(self, gpu: FakeGpu) -> None:
        super().__init__(gpu)
        self.asleep: dict[str, int] = {}  # model → host bytes its weights take
        self.sleeps: list[str] = []
        self.wakes: list[str] = []
        self.frees_on_sleep = True  # vLLM without --enable-sleep-mode "sleeps" holding all

    async def load(self, target: ModelTarget) -> None:
        if target.name in self.asleep:
            self.wakes.append(target.name)
            del self.asleep[target.name]
            self.gpu.held[target.name] = (target.gpu_index or 0, self.gpu.sizes[target.name])
            return
        await super().load(target)

    def can_sleep(self, model: str) -> bool:
        return model in self.gpu.held and model not in self.asleep

    def is_asleep(self, model: str) -> bool:
        return model in self.asleep and model in self.gpu.held

    async def sleep(self, model: str) -> None:
        self.sleeps.append(model)
        device, size = self.gpu.held[model]
        self.gpu.held[model] = (device, RESIDUAL if self.frees_on_sleep else size)
        self.asleep[model] = size

    async def unload(self, model: str) -> None:
        self.asleep.pop(model, None)
        await super().unload(model)

    def upstream(self, model: str) -> str | None:
        return None if model in self.asleep else super().upstream(model)

    def memory_pids(self, model: str) -> list[int]:
        return [hash(model) % 30000 + 2] if model in self.gpu.held else []

    async def reported_memory(self, model: str) -> tuple[int, int] | None:
        return None  # measured from its process, like vLLM

    def usage(self, pid: int) -> tuple[int, dict[int, int]]:
        for model, (device, held) in self.gpu.held.items():
            if self.memory_pids(model) == [pid]:
                return self.asleep.get(model, 0), {device: held}
        return 0, {}


def make_sleepy(
    sizes: dict[str, float], ram_reserve_mib: int = 0, **scheduler: Any
) -> tuple[Residency, SleepyAdapter, FakeGpu, FakeClock]:
    residency, plain, gpu, clock = make(sizes, **scheduler)
    adapter = SleepyAdapter(gpu)
    for entry in residency._ledger.entries.values():
        entry.adapter = adapter
    adapter.on_lost(plain._on_lost or (lambda m, w: None))
    residency._ledger.resources = ResourcesConfig(
        vram_reserve_mib=0, ram_reserve_mib=ram_reserve_mib
    )

    async def tree_usage(pid: int) -> tuple[int, dict[int, int]]:
        return adapter.usage(pid)

    gpu.tree_usage = tree_usage  # type: ignore[method-assign]
    return residency, adapter, gpu, clock


async def test_an_evicted_sleep_mode_model_sleeps_and_wakes_instead_of_a_cold_start() -> None:
    residency, adapter, _, clock = make_sleepy({"a": 10, "b": 10, "c": 10})
    await use_once(residency, "a", clock)
    await use_once(residency, "b", clock)
    await use_once(residency, "c", clock)  # a, the least recently used, goes to sleep
    a = residency._ledger.entries["a"]
    assert (a.state, adapter.sleeps, adapter.unloads) == (ModelState.SLEEPING, ["a"], [])
    assert (a.device, a.accounted_vram, a.accounted_ram) == ("gpu0", RESIDUAL, 10 * GiB)
    assert residency.info("a")["state"] == "sleeping"
    await use_once(residency, "a", clock)  # wakes: only b (LRU now) must make room
    assert adapter.wakes == ["a"]
    assert [name for name, _ in adapter.loads] == ["a", "b", "c"]  # no second cold start
    assert (a.state, a.accounted_vram, a.accounted_ram) == (ModelState.LOADED, 10 * GiB, 0)
    assert residency.view("b").state == ModelState.SLEEPING


async def test_a_sleep_mode_model_is_stopped_instead_when_host_ram_is_short() -> None:
    # FakeGpu reports 60 GiB of host RAM available: a 58 GiB reserve leaves 2 GiB.
    residency, adapter, _, clock = make_sleepy({"a": 10, "b": 20}, ram_reserve_mib=58 * 1024)
    await use_once(residency, "a", clock)
    await use_once(residency, "b", clock)
    a = residency._ledger.entries["a"]
    assert (a.state, adapter.sleeps, adapter.unloads) == (ModelState.UNLOADED, [], ["a"])
    assert "stopped, not asleep: host RAM too short to hold it asleep" in a.message


async def test_a_sleep_that_frees_no_gpu_memory_is_not_believed() -> None:
    residency, adapter, _, clock = make_sleepy({"a": 10})
    adapter.frees_on_sleep = False
    await use_once(residency, "a", clock)
    await residency.unload("a")
    a = residency._ledger.entries["a"]
    assert (a.state, adapter.sleeps, adapter.unloads) == (ModelState.UNLOADED, ["a"], ["a"])
    assert "it said it sleeps but still holds 10.0 GiB of the GPU" in a.message


async def test_unload_puts_to_sleep_then_stops_and_keep_alive_sleeps() -> None:
    residency, adapter, _, clock = make_sleepy({"a": 4, "t": 4}, keep_alive="60s")
    await use_once(residency, "a", clock)
    await residency.unload("a")
    assert residency.view("a").state == ModelState.SLEEPING
    await residency.unload("a")
    assert residency.view("a").state == ModelState.UNLOADED
    assert (adapter.sleeps, adapter.unloads) == (["a"], ["a"])
    await use_once(residency, "t", clock)
    clock.now += 61
    await residency.tick()
    await settled(residency, "t", ModelState.SLEEPING)
    assert residency.view("t").message == "idle for 60 s (keep_alive); asleep, weights in host RAM"


async def test_a_sleeping_model_whose_process_dies_is_unloaded_and_a_pin_wakes_it() -> None:
    residency, adapter, gpu, clock = make_sleepy({"a": 4, "b": 4})
    await use_once(residency, "a", clock)
    await use_once(residency, "b", clock)
    await residency.unload("a")
    await residency.unload("b")
    residency.set_pin("a", True)
    await residency.tick()
    await settled(residency, "a", ModelState.LOADED)
    assert adapter.wakes == ["a"]
    del adapter.asleep["b"], gpu.held["b"]
    adapter._lost("b", "exited with code 1")
    await settled(residency, "b", ModelState.UNLOADED)
    assert residency.view("b").message == "lost: exited with code 1"


class OneModelAdapter(FakeAdapter):
    """A server that holds one model at a time (TabbyAPI)."""

    one_model_at_a_time = True


async def test_a_one_model_server_swaps_its_model_and_a_busy_one_is_waited_for() -> None:
    residency, _, gpu, clock = make({"t1": 4, "t2": 4}, busy_wait_s=60)
    adapter = OneModelAdapter(gpu)
    for entry in residency._ledger.entries.values():
        entry.adapter = adapter
    await use_once(residency, "t1", clock)
    held = await holding(residency, "t1")
    swap = asyncio.create_task(use_once(residency, "t2", clock))
    while residency.view("t2").queued == 0:
        await residency.wait_changed(1)
    assert not swap.done() and adapter.unloads == []  # t1 is busy: the swap waits
    await held.release()
    await swap
    assert adapter.unloads == ["t1"]  # though 20 GiB were free
    assert residency.view("t2").state == ModelState.LOADED


async def test_a_sleeping_victim_of_a_load_that_never_ran_is_restored_asleep() -> None:
    residency, adapter, _, clock = make_sleepy({"a": 4})
    await use_once(residency, "a", clock)
    await residency.unload("a")
    a = residency._ledger.entries["a"]
    residency._ledger.set(a, ModelState.UNLOADING, "evicted for c")  # as _begin books a victim
    residency._restore_victims(["a"])  # the load was cancelled before reaching it
    assert a.state == ModelState.SLEEPING and adapter.is_asleep("a")


async def test_a_declared_model_shows_its_measurement_as_measured_while_loaded() -> None:
    residency, _, gpu, _ = make({"a": 2})
    gpu.sizes["a"] = 3 * GiB  # it really takes more than its vram_mib says
    await residency.load("a")
    info = residency.info("a")
    assert (info["vram_bytes"], info["memory_source"]) == (3 * GiB, "measured")
    assert "the declared 2.0 GiB" in info["memory_detail"]
    await residency.unload("a")
    info = residency.info("a")
    assert (info["vram_bytes"], info["memory_source"]) == (2 * GiB, "declared")
