"""Residency's ledger: what is recorded about every model, kept private to residency.

:class:`Ledger` holds the state the executor works from: the configs, the resource
monitor and its last sample, each model's :class:`ModelEntry`, the clocks, the change
notices readers wait on, the event hub observers subscribe to, and the task, lock and
device sets loads and unloads share. It records state changes and answers questions
(which entry, what snapshot, what status) but never starts, stops or measures a model
through a provider: that is the executor's job (:class:`helixd.scheduler.residency.
Residency`, which owns one ledger and is the only code that writes to it). Kept apart so
the record of what is resident changes for its own reasons, not with how models load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from helixd.config import ResourcesConfig, SchedulerConfig
from helixd.errors import ShuttingDown, UnknownModel
from helixd.resources.monitor import ResourceSample
from helixd.scheduler import views
from helixd.scheduler.core import RAM, ModelState, ModelView, Snapshot
from helixd.scheduler.entry import ModelEntry, ResourceSource
from helixd.scheduler.events import Changed, CountsChanged, EventHub, StateChanged

log = logging.getLogger("helixd.scheduler")

# Called by an adapter when a model's process went away by itself: (model, why).
LostHandler = Callable[[str, str], None]


class Ledger:
    """Residency's books and the bookkeeping on them; owned by one :class:`Residency`."""

    def __init__(
        self,
        resources: ResourcesConfig,
        scheduler: SchedulerConfig,
        monitor: ResourceSource,
        lost: LostHandler,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.resources = resources
        self.scheduler = scheduler
        self.monitor = monitor
        self.entries: dict[str, ModelEntry] = {}
        self.last_sample: ResourceSample | None = None
        self.clock = clock
        self.wall = wall_clock
        self.events = EventHub()
        self.plan_lock = asyncio.Lock()
        self.loading_devices: set[str] = set()
        self.unloading: set[str] = set()  # unloads under way (their process is stopping)
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self._lost = lost
        self._changed = asyncio.Event()
        self._waiting = 0  # tasks in wait_changed
        self._state_changed = asyncio.Event()
        self._sampled_at = 0.0
        self._figures_moved = False  # a load or unload ended since the last sample

    # -- records -----------------------------------------------------------------------

    def add(self, entry: ModelEntry) -> None:
        """Track a configured model."""
        self.entries[entry.name] = entry
        entry.adapter.on_lost(self._lost)

    def notify(self, state: bool = True) -> None:
        """Wake waiters. ``state``: a model's state changed, not just a request count.

        Counts change twice per proxied request; only waiters for a slot or for room care.
        State changes also wake the maintenance pass and tell subscribers (the daemon
        refreshes systemd's STATUS= line).
        """
        if self._waiting:  # else nobody waits: no new Event (this runs twice a request)
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
        if state:
            self._state_changed.set()
            self.events.emit(Changed())

    def counts_changed(self, entry: ModelEntry, state: bool = False) -> None:
        """A request began waiting, took a slot or ended on ``entry``."""
        self.notify(state)
        self.events.emit(CountsChanged(entry.name, entry.in_flight, entry.queued))

    async def wait_state_changed(self, timeout: float | None) -> None:
        """Wait until a model's state changes (not a mere request count), or ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._state_changed.wait()
        self._state_changed.clear()

    async def wait_changed(self, timeout: float | None) -> None:
        """Wait until any model's state changes (or ``timeout`` passes)."""
        changed = self._changed
        self._waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await changed.wait()
        finally:
            self._waiting -= 1

    def set(self, entry: ModelEntry, state: ModelState, message: str = "") -> None:
        """Record ``entry``'s new state and why; the figures of a model gone are cleared."""
        old = entry.state
        if state != old:
            log.info(
                "model %s: %s → %s%s", entry.name, old, state, f" ({message})" if message else ""
            )
        if state != old or entry.state_since_wall is None:
            entry.state_since_wall = self.wall()
        entry.state = state
        entry.message = message
        if state in (
            ModelState.LOADED,
            ModelState.UNLOADED,
            ModelState.FAILED,
            ModelState.SLEEPING,
        ):
            self._figures_moved = True
        if state in (ModelState.UNLOADED, ModelState.FAILED):
            entry.device = None
            entry.accounted_vram = entry.accounted_ram = 0
            entry.accounted_measured = False
        if state != old:
            self.events.emit(StateChanged(entry.name, old, state, message))
        self.notify()

    def fail(self, entry: ModelEntry, why: str) -> None:
        """Record a failed load or unload; the model cools down before the next try."""
        entry.failed_until = self.clock() + self.scheduler.failed_cooldown_s
        self.set(entry, ModelState.FAILED, why)

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
        for name, entry in self.entries.items():
            if name not in new and not entry.removed:
                removed.append(name)
                entry.removed = True
                entry.stale = entry.state != ModelState.UNLOADED
        for name, fresh in new.items():
            current = self.entries.get(name)
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
        for name in [n for n, e in self.entries.items() if e.removed and not e.stale]:
            del self.entries[name]
        self.notify()
        return {"models_added": added, "models_removed": removed, "models_changed": changed_names}

    def spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task residency owns (cancelled and awaited on close)."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- questions ---------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        """The entry for ``name``; unknown names get a 404 naming the known ones."""
        found = self.entries.get(name)
        if found is None or found.removed:
            known = ", ".join(self.names()) or "none configured"
            raise UnknownModel(f"no model named {name!r}; models: {known}")
        return found

    def current(self, name: str) -> ModelEntry | None:
        """The entry for ``name`` if it is configured now (not removed by a reload)."""
        found = self.entries.get(name)
        return None if found is None or found.removed else found

    def names(self) -> list[str]:
        """The configured models, sorted."""
        return sorted(n for n, e in self.entries.items() if not e.removed)

    def check_current(self, entry: ModelEntry) -> None:
        """A request that waited across a reload or a shutdown must not load a stale entry."""
        if self.closed:
            raise ShuttingDown("helixd is shutting down")
        if entry.removed or self.entries.get(entry.name) is not entry:
            raise UnknownModel(f"{entry.name} was removed from the config while the request waited")

    def now(self) -> float:
        """The injected clock's time."""
        return self.clock()

    # -- figures -----------------------------------------------------------------------

    async def refresh(self, max_age_s: float = 1.0) -> None:
        """Read fresh figures for a reader (status, models) unless they are recent."""
        old = self.clock() - self._sampled_at > max_age_s
        if self.last_sample is None or old or self._figures_moved:
            await self.sample()

    async def resample(self) -> None:
        """Read fresh figures now."""
        await self.sample()

    def sampled_at(self) -> float | None:
        """When the figures were last read (None: never)."""
        return None if self.last_sample is None else self._sampled_at

    async def sample(self) -> ResourceSample:
        """Read fresh figures and keep them as the last sample."""
        sample = await self.monitor.sample()
        self.last_sample = sample
        self._sampled_at = self.clock()
        self._figures_moved = False
        return sample

    def device_free(self, sample: ResourceSample, device: str) -> int:
        """What ``sample`` says is free on ``device``."""
        if device == RAM:
            return sample.ram.available_bytes
        for gpu in sample.gpus:
            if f"gpu{gpu.index}" == device:
                return gpu.free_bytes
        return 0

    # -- views -------------------------------------------------------------------------

    def snapshot(self, sample: ResourceSample, leave_out: str | None = None) -> Snapshot:
        """The core's view of the world now."""
        return views.snapshot(
            self.entries,
            sample,
            self.resources,
            self.loading_devices,
            leave_out,
            self.scheduler.keep_alive,
        )

    def model_views(self) -> dict[str, ModelView]:
        """Every model's frozen facts now, for the policies that need no figures."""
        return views.model_views(self.entries, self.scheduler.keep_alive)

    def view(self, entry: ModelEntry) -> ModelView:
        """One model's frozen facts now, for the policies."""
        return views.model_view(entry, self.scheduler.keep_alive)

    def status(self, entry: ModelEntry) -> views.ModelStatus:
        """One model frozen now, for readers outside the scheduler."""
        return views.model_status(entry, self.scheduler.keep_alive)

    def devices(self) -> dict[str, Any]:
        """Devices for ``status``: figures, helixd's budget and what it accounts."""
        return views.devices(self.entries, self.last_sample, self.resources, self.loading_devices)

    def info(self, entry: ModelEntry) -> dict[str, Any]:
        """The control API's view of one model."""
        return views.model_info(entry, self.scheduler)

    def summary_counts(self) -> Mapping[str, int]:
        """How many models are in each state."""
        return views.summary_counts(self.entries.values())
