"""Residency's maintenance: the pass that keeps the books' promises over time.

A pass unloads models idle past their keep_alive (or whose config changed), loads pinned
models that are missing, and samples the figures at the configured pace; :meth:`run`
repeats it whenever something changes or a timer is due. It decides *when* to load and
unload and leaves *how* to the executor (:class:`helixd.scheduler.residency.Residency`,
a subclass), so timers and pins change apart from the load and unload sequences.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod

from helixd.scheduler.books import ResidencyBooks
from helixd.scheduler.core import ModelState
from helixd.scheduler.entry import ModelEntry, ResidencyError

log = logging.getLogger("helixd.scheduler")


class ResidencyMaintenance(ResidencyBooks):
    """The maintenance pass and its loop; the executor supplies loads and unloads."""

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
                        why = f"idle for {keep:g} s (keep_alive)"
                        self._start_unload(entry, why, sleep=True)
                    else:
                        due = min(due, left)
            if entry.stale and entry.state == ModelState.SLEEPING and entry.idle:
                entry.stale = False
                why = "removed from the config" if entry.removed else "config changed"
                self._start_unload(entry, f"{why} (it was asleep)")
            if entry.removed:
                continue
            if entry.pinned and entry.state in (
                ModelState.UNLOADED,
                ModelState.FAILED,
                ModelState.SLEEPING,
            ):
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

    def _start_unload(
        self, entry: ModelEntry, why: str, process_gone: bool = False, sleep: bool = False
    ) -> None:
        """Unload in a task (a pass must not wait for a process to stop); booked at once.

        ``sleep``: a model that can sleep (vLLM) sleeps instead of stopping.
        """
        self._set(entry, ModelState.UNLOADING, why)
        self._spawn(self._unload(entry, why, process_gone, sleep), f"unload:{entry.name}")

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
            await self.wait_state_changed(due)

    # -- what the executor does (Residency defines these) ------------------------------

    @abstractmethod
    async def load(self, name: str, timeout: float | None = None) -> ModelEntry:
        """Make ``name`` resident."""

    @abstractmethod
    async def _unload(
        self, entry: ModelEntry, why: str, process_gone: bool = False, sleep: bool = False
    ) -> None:
        """Stop the model, wait for its memory to show up free, then book it unloaded."""

    @abstractmethod
    def _unloaded(self, entry: ModelEntry, why: str) -> None:
        """Book the model unloaded."""
