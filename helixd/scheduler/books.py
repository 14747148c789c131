"""The books of residency: what every part shares, recorded and answered, never acted on.

:class:`ResidencyBooks` owns the state the executor works from: the configs, the resource
monitor and its last sample, each model's :class:`ModelEntry`, the clocks, the change
event readers wait on, and the task, lock and device sets loads and unloads share. It
records state changes and answers questions (which entry, what snapshot, what status),
but never starts, stops or measures a model through a provider; that is the executor's
job (:class:`helixd.scheduler.residency.Residency`, which extends it). Kept apart so the
record of what is resident changes for its own reasons, not with how models are loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from helixd.config import ResourcesConfig, SchedulerConfig
from helixd.errors import ShuttingDown, UnknownModel
from helixd.resources.monitor import ResourceSample
from helixd.scheduler import views
from helixd.scheduler.core import RAM, ModelState, ModelView, Snapshot
from helixd.scheduler.entry import ModelEntry, ResourceSource

log = logging.getLogger("helixd.scheduler")


class ResidencyBooks(ABC):
    """Residency's shared state and the bookkeeping on it; the executor subclasses it."""

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
        # Observers for metrics: a load ended (model, succeeded, seconds); a model evicted.
        self.on_load: Callable[[str, bool, float], None] | None = None
        self.on_evict: Callable[[str], None] | None = None
        # For alerts: a load ended (model, why it failed or None, out of GPU memory).
        self.on_load_outcome: Callable[[str, str | None, bool], None] | None = None
        self._state_changed = asyncio.Event()

    # -- books -------------------------------------------------------------------------

    def add(self, entry: ModelEntry) -> None:
        """Track a configured model."""
        self.models[entry.name] = entry
        entry.adapter.on_lost(self._lost)

    def _notify(self, state: bool = True) -> None:
        """Wake waiters. ``state``: a model's state changed, not just a request count.

        Counts change twice per proxied request; only waiters for a slot or for room care.
        State changes also wake the maintenance pass and refresh systemd's STATUS= line.
        """
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if state:
            self._state_changed.set()
            if self.on_change is not None:
                self.on_change()

    async def wait_state_changed(self, timeout: float | None) -> None:
        """Wait until a model's state changes (not a mere request count), or ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._state_changed.wait()
        self._state_changed.clear()

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
            raise UnknownModel(f"no model named {name!r}; models: {known}")
        return found

    def _check_current(self, entry: ModelEntry) -> None:
        """A request that waited across a reload or a shutdown must not load a stale entry."""
        if self._closed:
            raise ShuttingDown("helixd is shutting down")
        if entry.removed or self.models.get(entry.name) is not entry:
            raise UnknownModel(f"{entry.name} was removed from the config while the request waited")

    def _fail(self, entry: ModelEntry, why: str) -> None:
        entry.failed_until = self._clock() + self.scheduler.failed_cooldown_s
        self._set(entry, ModelState.FAILED, why)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @abstractmethod
    def _lost(self, name: str, why: str) -> None:
        """A model's process went away by itself (adapters call it); the executor acts."""

    # -- snapshots ---------------------------------------------------------------------

    async def refresh(self, max_age_s: float = 1.0) -> None:
        """Read fresh figures for a reader (status, models) unless they are recent."""
        old = self._clock() - self._sampled_at > max_age_s
        if self.last_sample is None or old or self._figures_moved:
            await self._sample()

    async def resample(self) -> None:
        """Read fresh figures now."""
        await self._sample()

    def sampled_at(self) -> float | None:
        """When the figures were last read (None: never)."""
        return None if self.last_sample is None else self._sampled_at

    def now(self) -> float:
        """The injected clock's time."""
        return self._clock()

    @property
    def closed(self) -> bool:
        """helixd is stopping: no load starts and the maintenance loop ends."""
        return self._closed

    async def _sample(self) -> ResourceSample:
        sample = await self.monitor.sample()
        self.last_sample = sample
        self._sampled_at = self._clock()
        self._figures_moved = False
        return sample

    def snapshot(self, sample: ResourceSample, leave_out: str | None = None) -> Snapshot:
        """The core's view of the world now."""
        return views.snapshot(
            self.models,
            sample,
            self.resources,
            self._loading_devices,
            leave_out,
            self.scheduler.keep_alive,
        )

    def model_views(self) -> dict[str, ModelView]:
        """Every model's frozen facts now, for the policies that need no figures."""
        return views.model_views(self.models, self.scheduler.keep_alive)

    def _view(self, entry: ModelEntry) -> ModelView:
        """One model's frozen facts now."""
        return views.model_view(entry, self.scheduler.keep_alive)

    def devices(self) -> dict[str, Any]:
        """Devices for ``status``: figures, helixd's budget and what it accounts."""
        return views.devices(self.models, self.last_sample, self.resources, self._loading_devices)

    def info(self, entry: ModelEntry) -> dict[str, Any]:
        """The control API's view of one model."""
        return views.model_info(entry, self.scheduler)

    def summary_counts(self) -> Mapping[str, int]:
        """How many models are in each state."""
        return views.summary_counts(self.models.values())

    def _device_free(self, sample: ResourceSample, device: str) -> int:
        if device == RAM:
            return sample.ram.available_bytes
        for gpu in sample.gpus:
            if f"gpu{gpu.index}" == device:
                return gpu.free_bytes
        return 0
