"""The executor: carries the core's plans out through the adapters and keeps the books.

It owns each model's state, in-flight and queued counts, last use, pins and TTL timers.
Decisions come from :func:`helixd.scheduler.core.plan_load`; this module only gathers
the snapshot, acts (unload victims, wait for their memory, load), and feeds results back.
Time comes from an injected clock, so the unit tests drive TTLs without sleeping.
The record of one model (:class:`ModelEntry`) lives in :mod:`helixd.scheduler.entry`
and the read-only views of the books in :mod:`helixd.scheduler.views`; the names other
modules import from here are re-exported, and the view methods delegate there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from helixd.config import ResourcesConfig, SchedulerConfig
from helixd.providers.base import LoadError, ModelTarget
from helixd.resources.monitor import ResourceSample
from helixd.scheduler import views
from helixd.scheduler.core import (
    RAM,
    Join,
    Load,
    LoadRequest,
    ModelState,
    Ready,
    Refuse,
    Snapshot,
    Wait,
    free_bytes,
    plan_load,
)
from helixd.scheduler.entry import ModelEntry, ResidencyError, ResourceSource
from helixd.scheduler.sizing import MemoryFigure
from helixd.scheduler.views import MiB

__all__ = ["ModelEntry", "Residency", "ResidencyError", "ResourceSource"]

log = logging.getLogger("helixd.scheduler")

# After an out-of-memory load, retry once asking for this much more room.
OOM_RETRY_FACTOR = 1.5
OOM_RETRY_MIN_EXTRA = 1024 * MiB
# An unload counts as done once this share of the model's memory shows up free again.
MEMORY_BACK_SHARE = 0.8
MEMORY_POLL_S = 0.1


class Residency:
    """Keeps the right models in memory; the proxy and the control API go through it."""

    def __init__(
        self,
        resources: ResourcesConfig,
        scheduler: SchedulerConfig,
        monitor: ResourceSource,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        remember: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.resources = resources
        self.scheduler = scheduler
        self.monitor = monitor
        self.models: dict[str, ModelEntry] = {}
        self.last_sample: ResourceSample | None = None
        self._clock = clock
        self._wall = wall_clock
        self.remember = remember
        self._plan_lock = asyncio.Lock()
        self._loading_devices: set[str] = set()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._sampled_at = 0.0
        self._figures_moved = False  # a load or unload ended since the last sample
        self._unloading: set[str] = set()  # unloads under way (their process is stopping)
        # Told of every change (the daemon refreshes systemd's STATUS= line from it).
        self.on_change: Callable[[], None] | None = None

    # -- books -------------------------------------------------------------------------

    def add(self, entry: ModelEntry) -> None:
        """Track a configured model."""
        self.models[entry.name] = entry
        entry.adapter.on_lost(self._lost)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self.on_change is not None:
            self.on_change()

    async def wait_changed(self, timeout: float | None) -> None:
        """Wait until any model's state changes (or ``timeout`` passes)."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await changed.wait()

    def _set(self, entry: ModelEntry, state: ModelState, message: str = "") -> None:
        if state != entry.state:
            log.info(
                "model %s: %s → %s%s",
                entry.name,
                entry.state,
                state,
                f" ({message})" if message else "",
            )
        entry.state = state
        entry.message = message
        if state in (ModelState.LOADED, ModelState.UNLOADED, ModelState.FAILED):
            self._figures_moved = True
        if state in (ModelState.UNLOADED, ModelState.FAILED):
            entry.device = None
            entry.accounted_vram = entry.accounted_ram = 0
        self._notify()

    def replace_config(
        self, resources: ResourcesConfig, scheduler: SchedulerConfig, new: Mapping[str, ModelEntry]
    ) -> dict[str, list[str]]:
        """Adopt a reloaded config. Resident models whose config changed (or that left the
        config) are unloaded once idle; pinned ones then load again with the new config.

        Returns the model names added, removed and changed, for the reload's answer.
        """
        self.resources, self.scheduler = resources, scheduler
        added: list[str] = []
        removed: list[str] = []
        changed_names: list[str] = []
        for name, entry in self.models.items():
            if name not in new and not entry.removed:
                removed.append(name)
                entry.removed = True
                entry.stale = entry.state != ModelState.UNLOADED
        for name, fresh in new.items():
            current = self.models.get(name)
            if current is None or (current.removed and not current.stale):
                added.append(name)
                self.add(fresh)
                continue
            changed = current.config != fresh.config or current.adapter is not fresh.adapter
            # Only what shapes the process (file, context, arguments, provider command)
            # needs a reload of the model; keep_alive, pins or limits apply as they are.
            reshaped = current.size_key != fresh.size_key or current.adapter is not fresh.adapter
            if current.removed:
                added.append(name)
            elif changed:
                changed_names.append(name)
            current.removed = False
            current.config = fresh.config
            current.figure = fresh.figure
            current.size_key = fresh.size_key
            current.pinned_by_config = fresh.pinned_by_config
            if current.adapter is not fresh.adapter:
                fresh.adapter.on_lost(self._lost)
                if current.state == ModelState.UNLOADED:
                    current.adapter = fresh.adapter
                else:
                    current.next_adapter = fresh.adapter
            if current.state != ModelState.UNLOADED:
                current.stale = reshaped
        for name in [n for n, e in self.models.items() if e.removed and not e.stale]:
            del self.models[name]
        self._notify()
        return {"models_added": added, "models_removed": removed, "models_changed": changed_names}

    def entry(self, name: str) -> ModelEntry:
        """The entry for ``name``; unknown names get a 404 naming the known ones."""
        found = self.models.get(name)
        if found is None or found.removed:
            known = ", ".join(sorted(n for n, e in self.models.items() if not e.removed))
            known = known or "none configured"
            raise ResidencyError(f"no model named {name!r}; models: {known}", "unknown_model", 404)
        return found

    # -- using a model -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, name: str, timeout: float | None = None) -> AsyncIterator[ModelEntry]:
        """Hold one slot of ``name``, loading it first if needed; release on exit."""
        entry = self.entry(name)
        if entry.queued >= entry.config.max_queue and (
            entry.state != ModelState.LOADED or entry.in_flight >= entry.config.max_concurrency
        ):
            raise ResidencyError(
                f"{name}: queue full ({entry.queued} waiting, max_queue = "
                f"{entry.config.max_queue}); try again later",
                "queue_full",
                503,
            )
        deadline = self._clock() + (
            timeout if timeout is not None else self.scheduler.load_timeout_s
        )
        entry.queued += 1
        self._notify()
        try:
            while True:
                await self._ensure_loaded(entry, deadline)
                if entry.state == ModelState.LOADED and (
                    entry.in_flight < entry.config.max_concurrency
                ):
                    break
                await self._wait_until(deadline, f"{name}: no free slot")
        finally:
            entry.queued -= 1
        entry.in_flight += 1
        self._notify()
        try:
            yield entry
        finally:
            entry.in_flight -= 1
            entry.last_used = self._clock()
            entry.last_used_wall = self._wall()
            self._notify()

    async def load(self, name: str, timeout: float | None = None) -> ModelEntry:
        """Make ``name`` resident (the control API's explicit load); a failed one retries."""
        entry = self.entry(name)
        if entry.state == ModelState.FAILED:
            entry.failed_until = 0.0  # an explicit load is the operator's retry
        deadline = self._clock() + (
            timeout if timeout is not None else self.scheduler.load_timeout_s
        )
        entry.queued += 1  # not evictable while we wait for it
        try:
            await self._ensure_loaded(entry, deadline)
        finally:
            entry.queued -= 1
        entry.last_used = self._clock()
        entry.last_used_wall = self._wall()
        self._notify()
        return entry

    async def _wait_until(self, deadline: float, what: str) -> None:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise ResidencyError(f"{what}; gave up waiting", "timeout", 504)
        await self.wait_changed(remaining)

    def _check_current(self, entry: ModelEntry) -> None:
        """A request that waited across a reload or a shutdown must not load a stale entry."""
        if self._closed:
            raise ResidencyError("helixd is shutting down", "stopping", 503)
        if entry.removed or self.models.get(entry.name) is not entry:
            raise ResidencyError(
                f"{entry.name} was removed from the config while the request waited",
                "unknown_model",
                404,
            )

    async def _ensure_loaded(self, entry: ModelEntry, deadline: float) -> None:
        busy_deadline: float | None = None
        while True:
            self._check_current(entry)
            if entry.state == ModelState.LOADED:
                return
            if entry.state == ModelState.FAILED and self._clock() < entry.failed_until:
                left = entry.failed_until - self._clock()
                raise ResidencyError(
                    f"{entry.name} failed to load: {entry.message}; next try in {left:.0f} s "
                    f"(or now: helixctl load {entry.name})",
                    "model_failed",
                    503,
                )
            if entry.state == ModelState.LOADING and entry.load_task is not None:
                await self._join(entry, deadline)
                continue
            plan = await self._plan(entry)
            if isinstance(plan, Ready):
                return
            if isinstance(plan, Load | Join):
                await self._join(entry, deadline)
                continue
            if isinstance(plan, Refuse):
                raise ResidencyError(plan.reason, "does_not_fit", 507)
            assert isinstance(plan, Wait)
            if not plan.busy:
                await self._wait_until(deadline, f"{entry.name}: {plan.reason}")
                continue
            if busy_deadline is None:
                busy_deadline = min(deadline, self._clock() + self.scheduler.busy_wait_s)
            await self._wait_until(busy_deadline, f"{entry.name}: waited for room: {plan.reason}")

    async def _join(self, entry: ModelEntry, deadline: float) -> None:
        """Wait for the model's load under way (shared by every request for it)."""
        task = entry.load_task
        if task is None:
            return
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise ResidencyError(f"{entry.name}: still loading; gave up waiting", "timeout", 504)
        # shield: a caller that gives up must not cancel the load others wait for.
        await asyncio.wait({asyncio.shield(task)}, timeout=remaining)
        if not task.done():
            raise ResidencyError(f"{entry.name}: still loading; gave up waiting", "timeout", 504)

    async def _plan(self, entry: ModelEntry) -> Ready | Join | Load | Wait | Refuse:
        async with self._plan_lock:
            if entry.state == ModelState.LOADING:
                return Join(entry.name)
            sample = await self._sample()
            self._check_current(entry)  # the sample was an await: look again
            request = self._request(entry, sample)
            plan = plan_load(self.snapshot(sample), request)
            if isinstance(plan, Load):
                self._begin(entry, plan, request)
            return plan

    def _request(self, entry: ModelEntry, sample: ResourceSample) -> LoadRequest:
        on_gpu = bool(sample.gpus) and entry.config.gpu_layers != 0
        return LoadRequest(entry.name, entry.figure.vram_bytes, entry.figure.ram_bytes, on_gpu)

    def _begin(self, entry: ModelEntry, plan: Load, request: LoadRequest) -> None:
        """Book the plan at once, so the next plan sees it, then act in a task."""
        for victim in plan.evict:
            self._set(self.models[victim], ModelState.UNLOADING, f"evicted for {entry.name}")
        entry.device = plan.device
        if plan.device == RAM:
            entry.accounted_vram, entry.accounted_ram = 0, request.vram_bytes + request.ram_bytes
        else:
            entry.accounted_vram, entry.accounted_ram = request.vram_bytes, request.ram_bytes
        self._loading_devices.add(plan.device)
        where = "host RAM" if plan.device == RAM else plan.device.upper()
        self._set(entry, ModelState.LOADING, f"on {where}")
        task = self._spawn(self._carry_out(entry, plan, request), f"load:{entry.name}")
        task.add_done_callback(lambda t: self._load_task_ended(entry, plan, t))
        entry.load_task = task

    def _load_task_ended(self, entry: ModelEntry, plan: Load, task: asyncio.Task[None]) -> None:
        """Repair the books of a load task cancelled before it ran (its finally never did)."""
        if entry.load_task is task and entry.state == ModelState.LOADING:
            self._loading_devices.discard(plan.device)
            self._restore_victims(plan.evict)
            self._set(entry, ModelState.UNLOADED, "load cancelled")

    def _restore_victims(self, names: Iterable[str]) -> None:
        """Victims a load marked for eviction but never reached are resident still."""
        for name in names:
            victim = self.models.get(name)
            if (
                victim is not None
                and victim.state == ModelState.UNLOADING
                and name not in self._unloading
            ):
                self._set(victim, ModelState.LOADED, "")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- acting ------------------------------------------------------------------------

    async def _carry_out(self, entry: ModelEntry, plan: Load, request: LoadRequest) -> None:
        device = plan.device
        victims = list(plan.evict)
        try:
            await self._evict(plan.evict, device)
            try:
                await entry.adapter.load(self._target(entry, device, request))
            except LoadError as exc:
                if not exc.out_of_memory:
                    raise
                log.warning("model %s: out of memory on %s; evicting more", entry.name, device)
                try:
                    more = await self._oom_victims(entry, request)
                except LoadError as no_room:
                    no_room.log_tail = no_room.log_tail or exc.log_tail
                    raise
                victims += more
                await self._evict(more, device)
                await entry.adapter.load(self._target(entry, device, request))
            await self._measure(entry)
            if entry.adapter.upstream(entry.name) is None:
                # It died between passing its probe and now (the adapter told _lost,
                # which ignores models that are still loading).
                raise LoadError(
                    f"{entry.name} stopped right after it became ready; "
                    f"see helixctl logs {entry.name}"
                )
            entry.last_used = self._clock()
            entry.last_used_wall = self._wall()
            self._set(entry, ModelState.LOADED, entry.message)
        except LoadError as exc:
            entry.log_tail = exc.log_tail
            await self._discard_load(entry)
            self._fail(entry, str(exc))
        except asyncio.CancelledError:
            await self._discard_load(entry)
            self._set(entry, ModelState.UNLOADED, "load cancelled")
            raise
        except Exception as exc:
            log.exception("model %s: load failed", entry.name)
            await self._discard_load(entry)
            self._fail(entry, f"internal error in helixd: {exc!r}")
        finally:
            self._restore_victims(victims)
            self._loading_devices.discard(device)
            self._notify()

    async def _discard_load(self, entry: ModelEntry) -> None:
        """Whatever a failed or cancelled load started must stop (even when cancelled)."""
        try:
            await _uncancellable(entry.adapter.unload(entry.name))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("model %s: stopping a failed load failed", entry.name)

    def _fail(self, entry: ModelEntry, why: str) -> None:
        entry.failed_until = self._clock() + self.scheduler.failed_cooldown_s
        self._set(entry, ModelState.FAILED, why)

    async def _oom_victims(self, entry: ModelEntry, request: LoadRequest) -> tuple[str, ...]:
        """Plan again on the same device as if the model needed more than looked free.

        The provider knows better than our figures: ask for more than the whole budget
        that seemed free, so the core names at least one more victim, in LRU order.
        """
        async with self._plan_lock:
            sample = await self._sample()
            snapshot = self.snapshot(sample, leave_out=entry.name)
            device = entry.device or RAM
            if device == RAM:
                budget = free_bytes(snapshot, snapshot.ram)
                need = request.ram_bytes + request.vram_bytes
                bigger = dataclasses.replace(
                    request, vram_bytes=0, ram_bytes=self._more_than(need, budget)
                )
            else:
                snapshot = dataclasses.replace(
                    snapshot, gpus=tuple(g for g in snapshot.gpus if g.id == device)
                )
                budget = free_bytes(snapshot, snapshot.gpus[0])
                bigger = dataclasses.replace(
                    request, vram_bytes=self._more_than(request.vram_bytes, budget)
                )
            plan = plan_load(snapshot, bigger)
            if not isinstance(plan, Load) or not plan.evict:
                reason = plan.reason if isinstance(plan, Refuse | Wait) else "nothing to evict"
                raise LoadError(f"out of memory on {device}, and no more room: {reason}")
            for victim in plan.evict:
                self._set(self.models[victim], ModelState.UNLOADING, f"evicted for {entry.name}")
            return plan.evict

    @staticmethod
    def _more_than(need: int, budget: int) -> int:
        return int(max(need * OOM_RETRY_FACTOR, need + OOM_RETRY_MIN_EXTRA, budget + 1))

    async def _evict(self, victims: Iterable[str], device: str) -> None:
        for name in victims:
            victim = self.models.get(name)
            if victim is not None and victim.state == ModelState.UNLOADING:
                await self._unload(victim, f"evicted for a load on {device}")

    async def _memory_back(self, device: str, before: int, expected: int) -> None:
        """Poll until most of what was unloaded shows up free (drivers free lazily).

        Bounded by a number of polls rather than the injected clock, which tests freeze.
        """
        polls = max(1, int(self.scheduler.memory_return_s / MEMORY_POLL_S))
        for attempt in range(polls):
            sample = await self._sample()
            if self._device_free(sample, device) - before >= expected * MEMORY_BACK_SHARE:
                return
            if attempt + 1 < polls:
                await asyncio.sleep(MEMORY_POLL_S)
        log.warning(
            "memory of unloaded models on %s not back after %g s; going on",
            device,
            self.scheduler.memory_return_s,
        )

    def _device_free(self, sample: ResourceSample, device: str) -> int:
        if device == RAM:
            return sample.ram.available_bytes
        for gpu in sample.gpus:
            if f"gpu{gpu.index}" == device:
                return gpu.free_bytes
        return 0

    async def _unload(self, entry: ModelEntry, why: str, process_gone: bool = False) -> None:
        """Stop the model, wait for its memory to show up free, then book it unloaded.

        It stays ``unloading`` until then, so a plan that needs the room waits for it
        rather than refusing on a stale NVML figure. The process is stopped even if the
        caller is cancelled meanwhile: the books never say unloaded while it runs.
        """
        device = entry.device or RAM
        # Only GPU drivers free lazily; host RAM is back when the process is gone. A lost
        # model's process is gone already: its memory was freed before we could look.
        lazy = device != RAM and not process_gone
        expected = entry.accounted_vram if lazy else 0
        self._set(entry, ModelState.UNLOADING, why)
        self._unloading.add(entry.name)
        stopped = False
        try:
            before = self._device_free(await self._sample(), device) if expected else 0
            stopped = True  # from here on the stop runs to its end, cancelled or not
            await _uncancellable(entry.adapter.unload(entry.name))
            if expected:
                await self._memory_back(device, before, expected)
        except asyncio.CancelledError:
            if stopped:
                self._unloaded(entry, why)
            else:  # cancelled before anything was stopped: it is still resident
                self._unloading.discard(entry.name)
                self._set(entry, ModelState.LOADED, "")
            raise
        except Exception as exc:
            log.exception("model %s: unload failed", entry.name)
            self._unloading.discard(entry.name)
            self._fail(entry, f"unload failed: {exc!r}; see helixd's log")
            return
        self._unloaded(entry, why)

    def _unloaded(self, entry: ModelEntry, why: str) -> None:
        self._unloading.discard(entry.name)
        if entry.next_adapter is not None:
            entry.adapter, entry.next_adapter = entry.next_adapter, None
        self._set(entry, ModelState.UNLOADED, why)
        if entry.removed and self.models.get(entry.name) is entry:
            del self.models[entry.name]

    def _target(self, entry: ModelEntry, device: str, request: LoadRequest) -> ModelTarget:
        return views.model_target(entry, device, request, self.last_sample)

    async def _measure(self, entry: ModelEntry) -> None:
        """Measure the model's processes; remember the figure for its next load."""
        pids = entry.adapter.memory_pids(entry.name)
        reported = await entry.adapter.reported_memory(entry.name)
        if reported is not None:
            vram, ram = reported
        elif pids:
            vram = ram = 0
            for pid in pids:
                rss, per_gpu = await self.monitor.tree_usage(pid)
                ram += rss
                vram += sum(per_gpu.values())
        else:
            return
        if entry.device == RAM:
            vram = 0
        entry.accounted_vram, entry.accounted_ram = vram, ram
        if entry.figure.source != "declared":
            entry.figure = MemoryFigure(vram, ram, "measured", "measured while loaded")
        if self.remember is not None:
            try:
                self.remember(entry.size_key, vram, ram)
            except OSError as exc:
                log.warning("cannot remember the size of %s: %s", entry.name, exc)

    def _lost(self, name: str, why: str) -> None:
        if self._closed:
            return  # helixd is stopping: the adapters are stopping every model anyway
        entry = self.models.get(name)
        if entry is None or entry.state != ModelState.LOADED:
            return
        self._start_unload(entry, f"lost: {why}", process_gone=True)

    # -- operator actions --------------------------------------------------------------

    async def unload(self, name: str) -> ModelEntry:
        """Unload on request: never a pinned or busy model."""
        entry = self.entry(name)
        if entry.pinned:
            raise ResidencyError(
                f"{name} is pinned; unpin it first (helixctl unpin {name})", "pinned", 409
            )
        if not entry.idle:
            raise ResidencyError(
                f"{name} is busy ({entry.in_flight} in flight, {entry.queued} queued); "
                "try again when it is idle",
                "busy",
                409,
            )
        if entry.state == ModelState.LOADING and entry.load_task is not None:
            entry.load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry.load_task
        if entry.state in (ModelState.LOADED, ModelState.FAILED):
            await self._unload(entry, "unloaded on request")
        return entry

    def set_pin(self, name: str, pinned: bool) -> ModelEntry:
        """Pin or unpin at run time; a pinned model is loaded by the next maintenance pass."""
        entry = self.entry(name)
        entry.runtime_pin = None if pinned == entry.pinned_by_config else pinned
        if pinned and entry.state == ModelState.FAILED:
            entry.failed_until = 0.0
        self._notify()
        return entry

    # -- maintenance -------------------------------------------------------------------

    async def tick(self) -> float:
        """One pass: unload expired idle models, load missing pins, re-measure.

        Returns how long until the next pass is due.
        """
        now = self._clock()
        due = self.scheduler.sample_interval_s
        for entry in list(self.models.values()):
            if entry.stale and entry.state == ModelState.FAILED:
                # Nothing resident: the new config simply deserves a fresh try.
                entry.stale, entry.failed_until = False, 0.0
                self._unloaded(entry, entry.message)
            if entry.stale and entry.state == ModelState.LOADED and entry.idle and entry.pinned:
                entry.stale = False
                self._start_unload(entry, "config changed; loading it again")
            if entry.state == ModelState.LOADED and entry.idle and not entry.pinned:
                keep = entry.config.keep_alive or self.scheduler.keep_alive
                if entry.stale:
                    entry.stale = False
                    why = "removed from the config" if entry.removed else "config changed"
                    self._start_unload(entry, why)
                elif not math.isinf(keep):
                    left = entry.last_used + keep - now
                    if left <= 0:
                        self._start_unload(entry, f"idle for {keep:g} s (keep_alive)")
                    else:
                        due = min(due, left)
            if entry.removed:
                continue
            if entry.pinned and entry.state in (ModelState.UNLOADED, ModelState.FAILED):
                left = entry.failed_until - now
                if left > 0:
                    due = min(due, left)
                elif entry.pin_task is None or entry.pin_task.done():
                    entry.pin_task = self._spawn(self._keep_pinned(entry), f"pin:{entry.name}")
        # Figures for status, at the sampling pace: a tick also runs on every change (each
        # request start and end), which must not cost an NVML read each.
        if self.last_sample is None or now - self._sampled_at >= self.scheduler.sample_interval_s:
            await self._sample()
        return max(due, 0.05)

    def _start_unload(self, entry: ModelEntry, why: str, process_gone: bool = False) -> None:
        """Unload in a task (a pass must not wait for a process to stop); booked at once."""
        self._set(entry, ModelState.UNLOADING, why)
        self._spawn(self._unload(entry, why, process_gone), f"unload:{entry.name}")

    async def _keep_pinned(self, entry: ModelEntry) -> None:
        try:
            await self.load(entry.name)
        except ResidencyError as exc:
            log.warning("pinned model %s not loaded: %s", entry.name, exc)
            if entry.state != ModelState.FAILED:
                self._fail(entry, str(exc))

    async def run(self) -> None:
        """Maintenance loop: a pass when something changes or a timer is due."""
        while not self._closed:
            try:
                due = await self.tick()
            except Exception:
                log.exception("residency maintenance failed; retrying")
                due = self.scheduler.sample_interval_s
            await self.wait_changed(due)

    async def close(self) -> None:
        """Stop maintenance and loads, then unload everything (helixd is stopping)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        adapters = {id(e.adapter): e.adapter for e in self.models.values()}
        await asyncio.gather(*(a.close() for a in adapters.values()), return_exceptions=True)

    # -- snapshots ---------------------------------------------------------------------

    async def refresh(self, max_age_s: float = 1.0) -> None:
        """Read fresh figures for a reader (status, models) unless they are recent."""
        old = self._clock() - self._sampled_at > max_age_s
        if self.last_sample is None or old or self._figures_moved:
            await self._sample()

    async def _sample(self) -> ResourceSample:
        sample = await self.monitor.sample()
        self.last_sample = sample
        self._sampled_at = self._clock()
        self._figures_moved = False
        return sample

    def snapshot(self, sample: ResourceSample, leave_out: str | None = None) -> Snapshot:
        """The core's view of the world now."""
        return views.snapshot(self.models, sample, self.resources, self._loading_devices, leave_out)

    def devices(self) -> dict[str, Any]:
        """Devices for ``status``: figures, helixd's budget and what it accounts."""
        return views.devices(self.models, self.last_sample, self.resources, self._loading_devices)

    def info(self, entry: ModelEntry) -> dict[str, Any]:
        """The control API's view of one model."""
        return views.model_info(entry, self.scheduler)

    def summary_counts(self) -> Mapping[str, int]:
        """How many models are in each state."""
        return views.summary_counts(self.models.values())


async def _uncancellable(coro: Any) -> None:
    """Run ``coro`` to its end even if the caller is cancelled; then re-raise the cancel.

    Stopping a model's process must finish: half-stopped, the books would lie.
    """
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
