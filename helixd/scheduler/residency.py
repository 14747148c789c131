"""The executor: carries the core's plans out through the adapters and keeps the books.

It owns each model's state, in-flight and queued counts, last use, pins and TTL timers.
Decisions come from :func:`helixd.scheduler.core.plan_load`; this module only gathers
the snapshot, acts (unload victims, wait for their memory, load), and feeds results back.
Time comes from an injected clock, so the unit tests drive TTLs without sleeping.
The record of one model (:class:`ModelEntry`) lives in :mod:`helixd.scheduler.entry`
and the read-only views of the books in :mod:`helixd.scheduler.views`; the names other
modules import from here are re-exported, and the view methods delegate there.
The books themselves (state, change notices, config reloads, samples and views) live in
:class:`helixd.scheduler.books.ResidencyBooks` and the maintenance pass (TTLs, pins) in
:class:`helixd.scheduler.maintenance.ResidencyMaintenance`; :class:`Residency` extends
them with everything that acts on a provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from helixd.providers.base import LoadError, ModelTarget, says_out_of_memory
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
    Wait,
    format_bytes,
    free_bytes,
    plan_load,
    queue_is_full,
)
from helixd.scheduler.entry import ModelEntry, ResidencyError, ResourceSource
from helixd.scheduler.maintenance import ResidencyMaintenance
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
# Asleep, a model keeps its CUDA context and little else on the GPU.
ASLEEP_MAX_SHARE = 0.5


class Residency(ResidencyMaintenance):
    """Keeps the right models in memory; the proxy and the control API go through it."""

    # -- using a model -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, name: str, timeout: float | None = None) -> AsyncIterator[ModelEntry]:
        """Hold one slot of ``name``, loading it first if needed; release on exit."""
        entry = self.entry(name)
        if queue_is_full(
            entry.in_flight, entry.queued, entry.config.max_concurrency, entry.config.max_queue
        ):
            raise ResidencyError(
                f"{name}: queue full ({entry.queued} waiting for "
                f"{entry.config.max_concurrency - entry.in_flight} free slot(s), max_queue = "
                f"{entry.config.max_queue}); try again later",
                "queue_full",
                503,
            )
        deadline = self._clock() + (
            timeout if timeout is not None else self.scheduler.load_timeout_s
        )
        entry.queued += 1
        self._notify(state=False)
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
        self._notify(state=False)
        try:
            yield entry
        finally:
            entry.in_flight -= 1
            entry.last_used = self._clock()
            entry.last_used_wall = self._wall()
            # A model that just went idle may have an unload waiting for that (a reload).
            self._notify(state=entry.idle and entry.stale)

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
        if entry.figure.source == "unknown" and entry.state != ModelState.LOADING:
            await self._ask_size(entry)
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

    async def _ask_size(self, entry: ModelEntry) -> None:
        """A model with no size known: the provider may know it (Ollama's /api/tags)."""
        hint = await entry.adapter.size_hint(entry.config.id or entry.name)
        if hint is None or entry.figure.source != "unknown":
            return
        size, detail = hint
        sample = self.last_sample or await self._sample()
        on_gpu = bool(sample.gpus) and entry.config.gpu_layers != 0
        vram, ram = (size, 0) if on_gpu else (0, size)
        entry.figure = MemoryFigure(vram, ram, "estimated", detail)

    def _request(self, entry: ModelEntry, sample: ResourceSample) -> LoadRequest:
        on_gpu = bool(sample.gpus) and entry.config.gpu_layers != 0 and entry.adapter.holds_memory
        exclusive: frozenset[str] = frozenset()
        if entry.adapter.one_model_at_a_time:
            exclusive = frozenset(
                n for n, e in self.models.items() if e.adapter is entry.adapter and n != entry.name
            )
        figure = entry.figure
        if entry.state == ModelState.SLEEPING and entry.device not in (None, RAM):
            # Waking happens where the process sleeps and adds only what it does not hold.
            return LoadRequest(
                entry.name,
                max(0, figure.vram_bytes - entry.accounted_vram),
                max(0, figure.ram_bytes - entry.accounted_ram),
                gpu=True,
                device=entry.device,
                exclusive=exclusive,
            )
        return LoadRequest(
            entry.name, figure.vram_bytes, figure.ram_bytes, on_gpu, exclusive=exclusive
        )

    def _begin(self, entry: ModelEntry, plan: Load, request: LoadRequest) -> None:
        """Book the plan at once, so the next plan sees it, then act in a task."""
        for victim in plan.evict:
            self._set(self.models[victim], ModelState.UNLOADING, f"evicted for {entry.name}")
        waking = entry.state == ModelState.SLEEPING
        if waking:  # what it holds asleep stays booked until it is measured awake
            entry.accounted_vram += request.vram_bytes
            entry.accounted_ram += request.ram_bytes
        elif plan.device == RAM:
            entry.accounted_vram, entry.accounted_ram = 0, request.vram_bytes + request.ram_bytes
        else:
            entry.accounted_vram, entry.accounted_ram = request.vram_bytes, request.ram_bytes
        entry.accounted_measured = False  # booked from the plan until measured again
        entry.device = plan.device
        self._loading_devices.add(plan.device)
        where = "host RAM" if plan.device == RAM else plan.device.upper()
        self._set(entry, ModelState.LOADING, f"{'waking' if waking else 'loading'} on {where}")
        task = self._spawn(self._carry_out(entry, plan, request, waking), f"load:{entry.name}")
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
                self._set(victim, self._resident_state(victim), "")

    @staticmethod
    def _resident_state(entry: ModelEntry) -> ModelState:
        """What a model that was never unloaded after all is: asleep, or loaded."""
        return ModelState.SLEEPING if entry.adapter.is_asleep(entry.name) else ModelState.LOADED

    # -- acting ------------------------------------------------------------------------

    async def _carry_out(
        self, entry: ModelEntry, plan: Load, request: LoadRequest, waking: bool = False
    ) -> None:
        device = plan.device
        victims = list(plan.evict)
        began = self._clock()
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
            self._set(entry, ModelState.LOADED, "woken from sleep" if waking else "")
            if self.on_load is not None:
                self.on_load(entry.name, True, self._clock() - began)
            if self.on_load_outcome is not None:
                self.on_load_outcome(entry.name, None, False)
        except LoadError as exc:
            entry.log_tail = exc.log_tail
            await self._discard_load(entry)
            self._fail(entry, str(exc))
            if self.on_load is not None:
                self.on_load(entry.name, False, self._clock() - began)
            if self.on_load_outcome is not None:
                oom = exc.out_of_memory or says_out_of_memory([str(exc), *exc.log_tail])
                self.on_load_outcome(entry.name, str(exc), oom)
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
                # Asleep, a model gives its GPU memory back but takes host RAM.
                await self._unload(victim, f"evicted for a load on {device}", sleep=device != RAM)
                if self.on_evict is not None:
                    self.on_evict(name)

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

    async def _unload(
        self, entry: ModelEntry, why: str, process_gone: bool = False, sleep: bool = False
    ) -> None:
        """Stop the model, wait for its memory to show up free, then book it unloaded.

        It stays ``unloading`` until then, so a plan that needs the room waits for it
        rather than refusing on a stale NVML figure. The process is stopped even if the
        caller is cancelled meanwhile: the books never say unloaded while it runs.
        With ``sleep``, a model that can sleep (vLLM's sleep mode) is put to sleep
        instead, unless host RAM is too short to keep its weights.
        """
        if sleep and not process_gone and entry.adapter.can_sleep(entry.name):
            try:
                why_not = await self._put_to_sleep(entry, why)
            except asyncio.CancelledError:
                if entry.state == ModelState.UNLOADING:  # asleep or not, it is resident
                    self._set(entry, self._resident_state(entry), "")
                raise
            if why_not is None:
                return
            log.info("model %s: stopping it instead of sleeping: %s", entry.name, why_not)
            why = f"{why}; stopped, not asleep: {why_not}"
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
                self._set(entry, self._resident_state(entry), "")
            raise
        except Exception as exc:
            log.exception("model %s: unload failed", entry.name)
            self._unloading.discard(entry.name)
            self._fail(entry, f"unload failed: {exc!r}; see helixd's log")
            return
        self._unloaded(entry, why)

    async def _put_to_sleep(self, entry: ModelEntry, why: str) -> str | None:
        """Sleep instead of stopping; None once asleep, else why it stays awake.

        Booked ``unloading`` before the first await (no request may take it meanwhile),
        with the host RAM its weights will take booked too (a plan made during the sleep
        must see it); on every way out the books match what the adapter says it is.
        """
        self._set(entry, ModelState.UNLOADING, why)
        self._unloading.add(entry.name)
        awake_ram = entry.accounted_ram
        asleep = False
        try:
            async with self._plan_lock:
                snapshot = self.snapshot(await self._sample())
                room = free_bytes(snapshot, snapshot.ram)
                # Asleep, the weights live in host RAM: at most what it holds on the GPU.
                need = max(entry.accounted_vram, entry.figure.vram_bytes)
                if need > room:
                    return (
                        f"host RAM too short to hold it asleep ({format_bytes(room)} free, "
                        f"up to {format_bytes(need)} needed)"
                    )
                entry.accounted_ram = awake_ram + need
            try:
                await _uncancellable(entry.adapter.sleep(entry.name))
            except LoadError as exc:
                return f"it did not fall asleep: {exc}"
            figures = await self._tree_figures(entry)
            if figures is not None:
                # vLLM answers a sleep even when it was started without sleep mode, and
                # then frees nothing: trust the GPU, not the answer.
                if entry.accounted_vram and figures[0] > entry.accounted_vram * ASLEEP_MAX_SHARE:
                    return (
                        f"it said it sleeps but still holds {format_bytes(figures[0])} of the GPU"
                    )
                entry.accounted_vram, entry.accounted_ram = figures
                entry.accounted_measured = True
            asleep = True
            return None
        finally:
            self._unloading.discard(entry.name)
            if not asleep:
                entry.accounted_ram = awake_ram
            elif entry.adapter.is_asleep(entry.name):
                self._set(entry, ModelState.SLEEPING, f"{why}; asleep, weights in host RAM")
            else:  # its process died while it fell asleep
                self._unloaded(entry, f"{why}; its process ended while falling asleep")
            # Otherwise it is still ``unloading``: the caller stops it, or, cancelled,
            # books it as the adapter has it.

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
        reported = await entry.adapter.reported_memory(entry.name)
        figures = reported if reported is not None else await self._tree_figures(entry)
        if figures is None:
            return
        vram, ram = figures
        if entry.device == RAM:
            vram = 0
        entry.accounted_vram, entry.accounted_ram = vram, ram
        entry.accounted_measured = True
        if entry.figure.source != "declared":
            note = entry.adapter.memory_note(entry.name) or "measured while loaded"
            entry.figure = MemoryFigure(vram, ram, "measured", note)
        if self.remember is not None:
            try:
                self.remember(entry.size_key, vram, ram)
            except OSError as exc:
                log.warning("cannot remember the size of %s: %s", entry.name, exc)

    async def _tree_figures(self, entry: ModelEntry) -> tuple[int, int] | None:
        """``(vram, ram)`` held by the model's own process trees, if it has any."""
        pids = entry.adapter.memory_pids(entry.name)
        if not pids:
            return None
        vram = ram = 0
        for pid in pids:
            rss, per_gpu = await self.monitor.tree_usage(pid)
            ram += rss
            vram += sum(per_gpu.values())
        return vram, ram

    def _lost(self, name: str, why: str) -> None:
        if self._closed:
            return  # helixd is stopping: the adapters are stopping every model anyway
        entry = self.models.get(name)
        if entry is None or entry.state not in (ModelState.LOADED, ModelState.SLEEPING):
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
        if entry.state == ModelState.SLEEPING:
            await self._unload(entry, "stopped on request (it was asleep)")
        elif entry.state in (ModelState.LOADED, ModelState.FAILED):
            # A sleep-mode model sleeps; a second unload stops it.
            await self._unload(entry, "unloaded on request", sleep=entry.state == ModelState.LOADED)
        return entry

    async def recycle(self, name: str, why: str, timeout: float | None = None) -> ModelEntry:
        """Stop a resident model's server and load it again, pinned or busy.

        For a server that no longer answers (the health job) or runs an old binary (the
        update job): requests in flight on it fail, as they would on the broken server.
        """
        entry = self.entry(name)
        if entry.state == ModelState.LOADING and entry.load_task is not None:
            entry.load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry.load_task
        if entry.state in (ModelState.LOADED, ModelState.SLEEPING, ModelState.FAILED):
            log.warning("model %s: restarting it: %s", name, why)
            await self._unload(entry, why)
        return await self.load(name, timeout)

    def set_pin(self, name: str, pinned: bool) -> ModelEntry:
        """Pin or unpin at run time; a pinned model is loaded by the next maintenance pass."""
        entry = self.entry(name)
        entry.runtime_pin = None if pinned == entry.pinned_by_config else pinned
        if pinned and entry.state == ModelState.FAILED:
            entry.failed_until = 0.0
        self._notify()
        return entry

    # -- maintenance -------------------------------------------------------------------

    async def close(self) -> None:
        """Stop maintenance and loads, then unload everything (helixd is stopping)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        adapters = {id(e.adapter): e.adapter for e in self.models.values()}
        await asyncio.gather(*(a.close() for a in adapters.values()), return_exceptions=True)


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
