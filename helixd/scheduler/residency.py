"""The executor: carries the decisions out through the adapters and keeps the books.

Every decision is a pure function that returns effects (:mod:`helixd.scheduler.effects`):
placement (:mod:`.core`), the periodic pass and the unloading requests (:mod:`.policy`),
sleep or stop and the out-of-memory re-plan (:mod:`.room`). This module takes a snapshot
of the books, asks, and acts: unload victims, wait for their memory, load, and record
the outcome. Time comes from an injected clock, so tests drive TTLs without sleeping.
The books (state, change notices, reloads, samples, events) are a
:class:`helixd.scheduler.ledger.Ledger` that :class:`Residency` owns and alone writes;
the periodic pass is a :class:`helixd.scheduler.maintenance.Maintenance` it owns and
feeds. Everything outside the scheduler reads frozen
:class:`~helixd.scheduler.views.ModelStatus` copies and subscribes to its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from helixd.config import ResourcesConfig, SchedulerConfig
from helixd.errors import WaitTimeout, refusal
from helixd.providers.base import LoadError, ModelAdapter, ModelTarget, says_out_of_memory
from helixd.scheduler import views
from helixd.scheduler.core import (
    RAM,
    LoadRequest,
    ModelState,
    Snapshot,
    eviction_order,
    plan_load,
)
from helixd.scheduler.effects import (
    Forget,
    Join,
    Load,
    Ready,
    Refuse,
    Stop,
    TickEffect,
    Unload,
    Wait,
)
from helixd.scheduler.entry import ModelEntry, ResidencyError, ResourceSource
from helixd.scheduler.events import EventHub, Evicted, LoadEnded, Measured
from helixd.scheduler.ledger import Ledger
from helixd.scheduler.maintenance import Maintenance
from helixd.scheduler.policy import (
    admission_refusal,
    cooldown_refusal,
    has_free_slot,
    on_lost,
    restart,
    unload_on_request,
    unload_refusal,
)
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
from helixd.scheduler.sizing import MemoryFigure
from helixd.scheduler.views import ModelStatus

__all__ = ["ModelStatus", "Residency", "ResidencyError", "ResourceSource"]

log = logging.getLogger("helixd.scheduler")

MEMORY_POLL_S = 0.1


class Residency:
    """Keeps the right models in memory; everything else reads it and asks it.

    It owns a :class:`~helixd.scheduler.ledger.Ledger` no other code writes to. Others
    get frozen :class:`~helixd.scheduler.views.ModelStatus` copies (:meth:`view`,
    :meth:`views`), answers (:meth:`would_queue`), a slot (:meth:`lease`), operator
    actions (:meth:`load`, :meth:`unload`, :meth:`recycle`, :meth:`set_pin`) and
    :attr:`events` to subscribe to.
    """

    def __init__(
        self,
        resources: ResourcesConfig,
        scheduler: SchedulerConfig,
        monitor: ResourceSource,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = Ledger(resources, scheduler, monitor, self._lost, clock, wall_clock)
        self._maintenance = Maintenance(self._ledger, self._apply_tick)

    # -- what others read --------------------------------------------------------------

    @property
    def events(self) -> EventHub:
        """Subscribe here to model state changes, loads, evictions and queue depths."""
        return self._ledger.events

    @property
    def scheduler(self) -> SchedulerConfig:
        """The ``[scheduler]`` config in force."""
        return self._ledger.scheduler

    @property
    def resources(self) -> ResourcesConfig:
        """The ``[resources]`` config in force."""
        return self._ledger.resources

    @property
    def closed(self) -> bool:
        """helixd is stopping: no load starts and the maintenance loop ends."""
        return self._ledger.closed

    def names(self) -> list[str]:
        """The configured models, sorted."""
        return self._ledger.names()

    def view(self, name: str) -> ModelStatus:
        """Model ``name`` now; :class:`~helixd.errors.UnknownModel` names the known ones."""
        return self._ledger.status(self._ledger.entry(name))

    def find(self, name: str) -> ModelStatus | None:
        """Model ``name`` now, or None if no configured model has that name."""
        entry = self._ledger.current(name)
        return None if entry is None else self._ledger.status(entry)

    def adapter_of(self, name: str) -> ModelAdapter | None:
        """The adapter serving model ``name`` now, or None if no model has that name: what
        the endpoint asks per request (which provider, which server shape) without the
        cost of a whole :class:`ModelStatus`."""
        entry = self._ledger.current(name)
        return None if entry is None else entry.adapter

    def views(self) -> list[ModelStatus]:
        """Every configured model now, in config order."""
        ledger = self._ledger
        return [ledger.status(e) for e in ledger.entries.values() if not e.removed]

    def would_queue(self, name: str) -> bool:
        """A lease of ``name`` now would wait: for a load, or for a free slot.

        False for a name no model has now: a lease of it is refused at once.
        """
        entry = self._ledger.current(name)
        if entry is None:
            return False
        return not has_free_slot(self._ledger.view(entry), entry.config.max_concurrency)

    def info(self, name: str) -> dict[str, Any]:
        """The control API's document of one model."""
        return self._ledger.info(self._ledger.entry(name))

    def infos(self) -> list[dict[str, Any]]:
        """The control API's document of every configured model."""
        ledger = self._ledger
        return [ledger.info(e) for e in ledger.entries.values() if not e.removed]

    def devices(self) -> dict[str, Any]:
        """Devices for ``status``: figures, helixd's budget and what it accounts."""
        return self._ledger.devices()

    def eviction_order(self) -> list[str]:
        """Who a load that needs room would evict now, first victim first."""
        return eviction_order(self._ledger.model_views())

    def summary_counts(self) -> Mapping[str, int]:
        """How many models are in each state."""
        return self._ledger.summary_counts()

    def now(self) -> float:
        """The injected clock's time (what ``failed_until`` is measured on)."""
        return self._ledger.clock()

    async def refresh(self, max_age_s: float = 1.0) -> None:
        """Read fresh figures for a reader (status, models) unless they are recent."""
        await self._ledger.refresh(max_age_s)

    async def wait_changed(self, timeout: float | None) -> None:
        """Wait until any model's state or request counts change (or ``timeout``)."""
        await self._ledger.wait_changed(timeout)

    # -- what the daemon tells it ------------------------------------------------------

    def add(self, entry: ModelEntry) -> None:
        """Track a configured model (built by :func:`helixd.scheduler.catalog.build_entries`)."""
        self._ledger.add(entry)

    def adopt(self, entries: Mapping[str, ModelEntry]) -> None:
        """Track the catalog's models at start."""
        for entry in entries.values():
            self._ledger.add(entry)

    def replace_config(
        self, resources: ResourcesConfig, scheduler: SchedulerConfig, new: Mapping[str, ModelEntry]
    ) -> dict[str, list[str]]:
        """Adopt a reloaded config (see :meth:`Ledger.replace_config`)."""
        return self._ledger.replace_config(resources, scheduler, new)

    def restore_pins(self, pins: Mapping[str, bool]) -> None:
        """Take up runtime pins read back from the state directory (after a restore)."""
        for name, entry in self._ledger.entries.items():
            entry.runtime_pin = pins.get(name)
        self._ledger.notify()

    # -- using a model -----------------------------------------------------------------

    def lease(self, name: str, timeout: float | None = None) -> Lease:
        """Hold one slot of ``name``, loading it first if needed; release on exit
        (``async with residency.lease(name) as model``).

        Waits for a load or a free slot up to ``timeout`` (the load timeout by default),
        or refuses at once (a full queue, a model cooling down, no room that could ever
        be made); gives the model as it was when the slot was taken.
        """
        return Lease(self, name, timeout)

    async def _acquire(self, name: str, timeout: float | None) -> ModelEntry:
        """Take a slot of ``name`` (see :meth:`lease`); the entry whose slot it is."""
        ledger = self._ledger
        entry = ledger.entry(name)
        config = entry.config
        if (
            entry.state == ModelState.LOADED
            and entry.in_flight < config.max_concurrency
            and entry.queued == 0
            and not ledger.closed
            and not entry.removed
        ):
            # The common case, on every proxied request: loaded, a slot free, nobody
            # ahead. Taken at once, with one change notice instead of three.
            entry.in_flight += 1
            ledger.counts_changed(entry)
            return entry
        full = admission_refusal(ledger.view(entry), config.max_concurrency, config.max_queue)
        if full is not None:
            raise refusal(full.code, full.reason)
        deadline = ledger.clock() + (
            timeout if timeout is not None else ledger.scheduler.load_timeout_s
        )
        entry.queued += 1
        ledger.counts_changed(entry)
        try:
            while True:
                await self._ensure_loaded(entry, deadline)
                if has_free_slot(ledger.view(entry), config.max_concurrency):
                    break
                await self._wait_until(deadline, f"{name}: no free slot")
        except BaseException:
            entry.queued -= 1
            ledger.counts_changed(entry)
            raise
        entry.queued -= 1
        entry.in_flight += 1
        ledger.counts_changed(entry)
        return entry

    def _release(self, entry: ModelEntry) -> None:
        entry.in_flight -= 1
        entry.last_used = self._ledger.clock()
        entry.last_used_wall = self._ledger.wall()
        # A model that just went idle may have an unload waiting for that (a reload).
        self._ledger.counts_changed(entry, state=entry.idle and entry.stale)

    async def load(self, name: str, timeout: float | None = None) -> ModelStatus:
        """Make ``name`` resident (the control API's explicit load); a failed one retries."""
        entry = self._ledger.entry(name)
        if entry.state == ModelState.FAILED:
            entry.failed_until = 0.0  # an explicit load is the operator's retry
        deadline = self._ledger.clock() + (
            timeout if timeout is not None else self._ledger.scheduler.load_timeout_s
        )
        entry.queued += 1  # not evictable while we wait for it
        try:
            await self._ensure_loaded(entry, deadline)
        finally:
            entry.queued -= 1
        entry.last_used = self._ledger.clock()
        entry.last_used_wall = self._ledger.wall()
        self._ledger.notify()
        return self._ledger.status(entry)

    async def _wait_until(self, deadline: float, what: str) -> None:
        remaining = deadline - self._ledger.clock()
        if remaining <= 0:
            raise WaitTimeout(f"{what}; gave up waiting")
        await self._ledger.wait_changed(remaining)

    async def _ensure_loaded(self, entry: ModelEntry, deadline: float) -> None:
        busy_deadline: float | None = None
        while True:
            self._ledger.check_current(entry)
            if entry.state == ModelState.LOADED:
                return
            cooling = cooldown_refusal(
                self._ledger.view(entry), entry.message, self._ledger.clock()
            )
            if cooling is not None:
                raise refusal(cooling.code, cooling.reason)
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
                raise refusal(plan.code, plan.reason)
            assert isinstance(plan, Wait)
            if not plan.busy:
                await self._wait_until(deadline, f"{entry.name}: {plan.reason}")
                continue
            if busy_deadline is None:
                busy_deadline = min(
                    deadline, self._ledger.clock() + self._ledger.scheduler.busy_wait_s
                )
            await self._wait_until(busy_deadline, f"{entry.name}: waited for room: {plan.reason}")

    async def _join(self, entry: ModelEntry, deadline: float) -> None:
        """Wait for the model's load under way (shared by every request for it)."""
        task = entry.load_task
        if task is None:
            return
        remaining = deadline - self._ledger.clock()
        if remaining <= 0:
            raise WaitTimeout(f"{entry.name}: still loading; gave up waiting")
        # shield: a caller that gives up must not cancel the load others wait for.
        await asyncio.wait({asyncio.shield(task)}, timeout=remaining)
        if not task.done():
            raise WaitTimeout(f"{entry.name}: still loading; gave up waiting")

    async def _plan(self, entry: ModelEntry) -> Ready | Join | Load | Wait | Refuse:
        if entry.figure.source == "unknown" and entry.state != ModelState.LOADING:
            await self._ask_size(entry)
        async with self._ledger.plan_lock:
            if entry.state == ModelState.LOADING:
                return Join(entry.name)
            sample = await self._ledger.sample()
            self._ledger.check_current(entry)  # the sample was an await: look again
            snapshot = self._ledger.snapshot(sample)
            request = self._request(entry, snapshot)
            plan = plan_load(snapshot, request)
            if isinstance(plan, Load):
                self._begin(entry, plan, request)
            return plan

    async def _ask_size(self, entry: ModelEntry) -> None:
        """A model with no size known: the provider may know it (Ollama's /api/tags)."""
        hint = await entry.adapter.size_hint(entry.config.id or entry.name)
        if hint is None or entry.figure.source != "unknown":
            return
        size, detail = hint
        sample = self._ledger.last_sample or await self._ledger.sample()
        on_gpu = bool(sample.gpus) and entry.config.gpu_layers != 0
        vram, ram = (size, 0) if on_gpu else (0, size)
        entry.figure = MemoryFigure(vram, ram, "estimated", detail)

    def _request(self, entry: ModelEntry, snapshot: Snapshot) -> LoadRequest:
        exclusive: frozenset[str] = frozenset()
        if entry.adapter.one_model_at_a_time:
            servers = {n: e.adapter for n, e in self._ledger.entries.items()}
            exclusive = exclusive_set(entry.name, servers)
        figure = (entry.figure.vram_bytes, entry.figure.ram_bytes)
        wants_gpu = entry.config.gpu_layers != 0 and entry.adapter.holds_memory
        return load_request(snapshot, entry.name, figure, wants_gpu, exclusive)

    def _begin(self, entry: ModelEntry, plan: Load, request: LoadRequest) -> None:
        """Book the plan at once, so the next plan sees it, then act in a task."""
        for victim in plan.evict:
            self._ledger.set(
                self._ledger.entries[victim], ModelState.UNLOADING, f"evicted for {entry.name}"
            )
        waking = entry.state == ModelState.SLEEPING
        held = (entry.accounted_vram, entry.accounted_ram)
        entry.accounted_vram, entry.accounted_ram = booking(plan, request, waking, held)
        entry.accounted_measured = False  # booked from the plan until measured again
        entry.device = plan.device
        self._ledger.loading_devices.add(plan.device)
        where = "host RAM" if plan.device == RAM else plan.device.upper()
        self._ledger.set(
            entry, ModelState.LOADING, f"{'waking' if waking else 'loading'} on {where}"
        )
        task = self._ledger.spawn(
            self._carry_out(entry, plan, request, waking), f"load:{entry.name}"
        )
        task.add_done_callback(lambda t: self._load_task_ended(entry, plan, t))
        entry.load_task = task

    def _load_task_ended(self, entry: ModelEntry, plan: Load, task: asyncio.Task[None]) -> None:
        """Repair the books of a load task cancelled before it ran (its finally never did)."""
        if entry.load_task is task and entry.state == ModelState.LOADING:
            self._ledger.loading_devices.discard(plan.device)
            self._restore_victims(plan.evict)
            self._ledger.set(entry, ModelState.UNLOADED, "load cancelled")

    def _restore_victims(self, names: Iterable[str]) -> None:
        """Victims a load marked for eviction but never reached are resident still."""
        for name in names:
            victim = self._ledger.entries.get(name)
            if (
                victim is not None
                and victim.state == ModelState.UNLOADING
                and name not in self._ledger.unloading
            ):
                self._ledger.set(victim, self._resident_state(victim), "")

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
        began = self._ledger.clock()
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
            entry.last_used = self._ledger.clock()
            entry.last_used_wall = self._ledger.wall()
            self._ledger.set(entry, ModelState.LOADED, "woken from sleep" if waking else "")
            self._ledger.events.emit(LoadEnded(entry.name, self._ledger.clock() - began))
        except LoadError as exc:
            entry.log_tail = exc.log_tail
            await self._discard_load(entry)
            self._ledger.fail(entry, str(exc))
            oom = exc.out_of_memory or says_out_of_memory([str(exc), *exc.log_tail])
            seconds = self._ledger.clock() - began
            self._ledger.events.emit(LoadEnded(entry.name, seconds, str(exc), oom))
        except asyncio.CancelledError:
            await self._discard_load(entry)
            self._ledger.set(entry, ModelState.UNLOADED, "load cancelled")
            raise
        except Exception as exc:
            log.exception("model %s: load failed", entry.name)
            await self._discard_load(entry)
            self._ledger.fail(entry, f"internal error in helixd: {exc!r}")
        finally:
            self._restore_victims(victims)
            self._ledger.loading_devices.discard(device)
            self._ledger.notify()

    async def _discard_load(self, entry: ModelEntry) -> None:
        """Whatever a failed or cancelled load started must stop (even when cancelled)."""
        try:
            await _uncancellable(entry.adapter.unload(entry.name))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("model %s: stopping a failed load failed", entry.name)

    async def _oom_victims(self, entry: ModelEntry, request: LoadRequest) -> tuple[str, ...]:
        """Plan again on the same device as if the model needed more than looked free
        (:func:`helixd.scheduler.room.plan_oom_retry`); book the victims it names."""
        async with self._ledger.plan_lock:
            sample = await self._ledger.sample()
            snapshot = self._ledger.snapshot(sample, leave_out=entry.name)
            plan = plan_oom_retry(snapshot, request, entry.device or RAM)
            if isinstance(plan, Refuse):
                raise LoadError(plan.reason)
            for victim in plan.evict:
                self._ledger.set(
                    self._ledger.entries[victim], ModelState.UNLOADING, f"evicted for {entry.name}"
                )
            return plan.evict

    async def _evict(self, victims: Iterable[str], device: str) -> None:
        for effect in evictions(victims, device):
            victim = self._ledger.entries.get(effect.model)
            if victim is not None and victim.state == ModelState.UNLOADING:
                await self._unload(victim, effect.why, sleep=effect.sleep)
                self._ledger.events.emit(Evicted(effect.model))

    async def _memory_back(self, device: str, before: int, expected: int) -> None:
        """Poll until most of what was unloaded shows up free (drivers free lazily).

        Bounded by a number of polls rather than the injected clock, which tests freeze.
        """
        polls = max(1, int(self._ledger.scheduler.memory_return_s / MEMORY_POLL_S))
        for attempt in range(polls):
            sample = await self._ledger.sample()
            if memory_is_back(self._ledger.device_free(sample, device) - before, expected):
                return
            if attempt + 1 < polls:
                await asyncio.sleep(MEMORY_POLL_S)
        log.warning(
            "memory of unloaded models on %s not back after %g s; going on",
            device,
            self._ledger.scheduler.memory_return_s,
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
                    self._ledger.set(entry, self._resident_state(entry), "")
                raise
            if why_not is None:
                return
            log.info("model %s: stopping it instead of sleeping: %s", entry.name, why_not)
            why = f"{why}; stopped, not asleep: {why_not}"
        device = entry.device or RAM
        expected = memory_to_wait_for(device, entry.accounted_vram, process_gone)
        self._ledger.set(entry, ModelState.UNLOADING, why)
        self._ledger.unloading.add(entry.name)
        stopped = False
        try:
            before = (
                self._ledger.device_free(await self._ledger.sample(), device) if expected else 0
            )
            stopped = True  # from here on the stop runs to its end, cancelled or not
            await _uncancellable(entry.adapter.unload(entry.name))
            if expected:
                await self._memory_back(device, before, expected)
        except asyncio.CancelledError:
            if stopped:
                self._unloaded(entry, why)
            else:  # cancelled before anything was stopped: it is still resident
                self._ledger.unloading.discard(entry.name)
                self._ledger.set(entry, self._resident_state(entry), "")
            raise
        except Exception as exc:
            log.exception("model %s: unload failed", entry.name)
            self._ledger.unloading.discard(entry.name)
            self._ledger.fail(entry, f"unload failed: {exc!r}; see helixd's log")
            return
        self._unloaded(entry, why)

    async def _put_to_sleep(self, entry: ModelEntry, why: str) -> str | None:
        """Sleep instead of stopping; None once asleep, else why it stays awake.

        Booked ``unloading`` before the first await (no request may take it meanwhile),
        with the host RAM its weights will take booked too (a plan made during the sleep
        must see it); on every way out the books match what the adapter says it is.
        """
        self._ledger.set(entry, ModelState.UNLOADING, why)
        self._ledger.unloading.add(entry.name)
        awake_ram = entry.accounted_ram
        asleep = False
        try:
            async with self._ledger.plan_lock:
                snapshot = self._ledger.snapshot(await self._ledger.sample())
                decision = plan_sleep(snapshot, entry.name, entry.figure.vram_bytes)
                if isinstance(decision, Stop):
                    return decision.reason
                entry.accounted_ram = awake_ram + decision.ram_bytes
            try:
                await _uncancellable(entry.adapter.sleep(entry.name))
            except LoadError as exc:
                return f"it did not fall asleep: {exc}"
            figures = await self._tree_figures(entry)
            if figures is not None:
                disbelieved = asleep_check(entry.name, entry.accounted_vram, figures[0])
                if disbelieved is not None:
                    return disbelieved.reason
                entry.accounted_vram, entry.accounted_ram = figures
                entry.accounted_measured = True
            asleep = True
            return None
        finally:
            self._ledger.unloading.discard(entry.name)
            if not asleep:
                entry.accounted_ram = awake_ram
            elif entry.adapter.is_asleep(entry.name):
                self._ledger.set(entry, ModelState.SLEEPING, f"{why}; asleep, weights in host RAM")
            else:  # its process died while it fell asleep
                self._unloaded(entry, f"{why}; its process ended while falling asleep")
            # Otherwise it is still ``unloading``: the caller stops it, or, cancelled,
            # books it as the adapter has it.

    def _unloaded(self, entry: ModelEntry, why: str) -> None:
        self._ledger.unloading.discard(entry.name)
        if entry.next_adapter is not None:
            entry.adapter, entry.next_adapter = entry.next_adapter, None
        self._ledger.set(entry, ModelState.UNLOADED, why)
        if entry.removed and self._ledger.entries.get(entry.name) is entry:
            del self._ledger.entries[entry.name]

    def _target(self, entry: ModelEntry, device: str, request: LoadRequest) -> ModelTarget:
        return views.model_target(entry, device, request, self._ledger.last_sample)

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
        self._ledger.events.emit(Measured(entry.name, entry.size_key, vram, ram))

    async def _tree_figures(self, entry: ModelEntry) -> tuple[int, int] | None:
        """``(vram, ram)`` held by the model's own process trees, if it has any."""
        pids = entry.adapter.memory_pids(entry.name)
        if not pids:
            return None
        vram = ram = 0
        for pid in pids:
            rss, per_gpu = await self._ledger.monitor.tree_usage(pid)
            ram += rss
            vram += sum(per_gpu.values())
        return vram, ram

    def _lost(self, name: str, why: str) -> None:
        if self._ledger.closed:
            return  # helixd is stopping: the adapters are stopping every model anyway
        entry = self._ledger.entries.get(name)
        effect = None if entry is None else on_lost(self._ledger.view(entry), why)
        if entry is not None and effect is not None:
            self._start_unload(entry, effect.why, process_gone=effect.process_gone)

    # -- operator actions --------------------------------------------------------------

    async def unload(self, name: str) -> ModelStatus:
        """Unload on request: never a pinned or busy model."""
        entry = self._ledger.entry(name)
        refused = unload_refusal(self._ledger.view(entry))
        if refused is not None:
            raise refusal(refused.code, refused.reason)
        await self._cancel_load(entry)
        effect = unload_on_request(self._ledger.view(entry))
        if effect is not None:
            await self._unload(entry, effect.why, sleep=effect.sleep)
        return self._ledger.status(entry)

    @staticmethod
    async def _cancel_load(entry: ModelEntry) -> None:
        """Cancel a load under way and wait for it to end (its books are repaired)."""
        if entry.state == ModelState.LOADING and entry.load_task is not None:
            entry.load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry.load_task

    async def recycle(self, name: str, why: str, timeout: float | None = None) -> ModelStatus:
        """Stop a resident model's server and load it again, pinned or busy.

        For a server that no longer answers (the health job) or runs an old binary (the
        update job): requests in flight on it fail, as they would on the broken server.
        """
        entry = self._ledger.entry(name)
        await self._cancel_load(entry)
        effect = restart(self._ledger.view(entry), why)
        if effect is not None:
            log.warning("model %s: restarting it: %s", name, why)
            await self._unload(entry, effect.why)
        return await self.load(name, timeout)

    def set_pin(self, name: str, pinned: bool) -> ModelStatus:
        """Pin or unpin at run time; a pinned model is loaded by the next maintenance pass."""
        entry = self._ledger.entry(name)
        entry.runtime_pin = None if pinned == entry.pinned_by_config else pinned
        if pinned and entry.state == ModelState.FAILED:
            entry.failed_until = 0.0
        self._ledger.notify()
        return self._ledger.status(entry)

    # -- maintenance -------------------------------------------------------------------

    async def tick(self) -> float:
        """One maintenance pass (TTLs, config changes, pins); returns when the next is due."""
        return await self._maintenance.tick()

    async def run(self) -> None:
        """The maintenance loop: a pass when something changes or a timer is due."""
        await self._maintenance.run()

    def _apply_tick(self, effect: TickEffect) -> None:
        """Carry out one effect of a maintenance pass."""
        entry = self._ledger.entries[effect.model]
        if isinstance(effect, Forget):
            entry.stale, entry.failed_until = False, 0.0
            self._unloaded(entry, entry.message)
        elif isinstance(effect, Unload):
            entry.stale = False
            self._start_unload(entry, effect.why, sleep=effect.sleep)
        else:
            entry.pin_task = self._ledger.spawn(self._keep_pinned(entry), f"pin:{entry.name}")

    def _start_unload(
        self, entry: ModelEntry, why: str, process_gone: bool = False, sleep: bool = False
    ) -> None:
        """Unload in a task (a pass must not wait for a process to stop); booked at once.

        ``sleep``: a model that can sleep (vLLM) sleeps instead of stopping.
        """
        self._ledger.set(entry, ModelState.UNLOADING, why)
        self._ledger.spawn(self._unload(entry, why, process_gone, sleep), f"unload:{entry.name}")

    async def _keep_pinned(self, entry: ModelEntry) -> None:
        try:
            await self.load(entry.name)
        except ResidencyError as exc:
            log.warning("pinned model %s not loaded: %s", entry.name, exc)
            if entry.state != ModelState.FAILED:
                self._ledger.fail(entry, str(exc))

    async def close(self) -> None:
        """Stop maintenance and loads, then unload everything (helixd is stopping)."""
        self._ledger.closed = True
        for task in list(self._ledger.tasks):
            task.cancel()
        await asyncio.gather(*self._ledger.tasks, return_exceptions=True)
        adapters = {id(e.adapter): e.adapter for e in self._ledger.entries.values()}
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


class Lease:
    """One slot of a model, held for an ``async with`` block (see :meth:`Residency.lease`).

    A class rather than a generator-based context manager: it is entered on every
    proxied request, and contextlib's machinery costs several times what it does.
    """

    __slots__ = ("_entry", "_name", "_residency", "_timeout")

    def __init__(self, residency: Residency, name: str, timeout: float | None) -> None:
        self._residency = residency
        self._name = name
        self._timeout = timeout
        self._entry: ModelEntry | None = None

    async def __aenter__(self) -> ModelStatus:
        residency = self._residency
        self._entry = await residency._acquire(self._name, self._timeout)
        return residency._ledger.status(self._entry)

    async def __aexit__(self, *_: object) -> None:
        if self._entry is not None:
            entry, self._entry = self._entry, None
            self._residency._release(entry)
