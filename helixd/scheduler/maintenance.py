"""Residency's maintenance: the pass that keeps the books' promises over time.

A pass asks :func:`helixd.scheduler.policy.plan_tick` what to do now (unload models idle
past their keep_alive or whose config changed, bring back missing pinned models) and
hands each effect to the executor; it also re-reads the figures at the configured pace.
:meth:`Maintenance.run` repeats it whenever a model's state changes or a timer is due.
The executor (:class:`helixd.scheduler.residency.Residency`) owns one and carries the
effects out, so the pass is tested with a recording sink and no adapter at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from helixd.config import SchedulerConfig
from helixd.scheduler.core import ModelView
from helixd.scheduler.effects import TickEffect
from helixd.scheduler.policy import plan_tick

log = logging.getLogger("helixd.scheduler")


class TickBooks(Protocol):
    """What a pass reads of residency's books, and the one thing it asks them to do."""

    @property
    def scheduler(self) -> SchedulerConfig: ...

    @property
    def closed(self) -> bool: ...

    def now(self) -> float: ...

    def model_views(self) -> Mapping[str, ModelView]: ...

    def sampled_at(self) -> float | None: ...

    async def resample(self) -> None: ...

    async def wait_state_changed(self, timeout: float | None) -> None: ...


class Maintenance:
    """The periodic pass and its loop: decides through the policy, acts through ``apply``."""

    def __init__(self, books: TickBooks, apply: Callable[[TickEffect], None]) -> None:
        self._books = books
        self._apply = apply

    async def tick(self) -> float:
        """One pass; returns how long until the next is due."""
        books = self._books
        interval = books.scheduler.sample_interval_s
        plan = plan_tick(books.model_views(), books.now(), interval, books.sampled_at())
        for effect in plan.effects:
            self._apply(effect)
        # Figures for status, at the sampling pace: a pass also runs on every change (each
        # request start and end), which must not cost an NVML read each.
        if plan.sample:
            await books.resample()
        return plan.due_s

    async def run(self) -> None:
        """Maintenance loop: a pass when something changes or a timer is due."""
        while not self._books.closed:
            try:
                due = await self.tick()
            except Exception:
                log.exception("residency maintenance failed; retrying")
                due = self._books.scheduler.sample_interval_s
            await self._books.wait_state_changed(due)
