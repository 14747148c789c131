"""The maintenance pass with fake books and a recording effect sink: no adapter, no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from helixd.config import SchedulerConfig
from helixd.scheduler.core import ModelState, ModelView
from helixd.scheduler.effects import BringBack, TickEffect, Unload
from helixd.scheduler.entry import ModelEntry
from helixd.scheduler.maintenance import Maintenance
from tests.unit.test_residency import make, settled, use_once


class Books:
    """The books a pass reads: models, a clock, figures read at some time."""

    def __init__(self, *models: ModelView, now: float = 1000.0) -> None:
        self.scheduler = SchedulerConfig.model_validate({"sample_interval_s": 5})
        self.models = {m.name: m for m in models}
        self.clock = now
        self.last_read: float | None = None
        self.reads = 0
        self.waits: list[float | None] = []
        self.stop_after_waits = 1

    @property
    def closed(self) -> bool:
        return len(self.waits) >= self.stop_after_waits

    def now(self) -> float:
        return self.clock

    def model_views(self) -> Mapping[str, ModelView]:
        return self.models

    def sampled_at(self) -> float | None:
        return self.last_read

    async def resample(self) -> None:
        self.reads += 1
        self.last_read = self.clock

    async def wait_state_changed(self, timeout: float | None) -> None:
        self.waits.append(timeout)


def idle(name: str, **kw: object) -> ModelView:
    fields: dict[str, object] = {"device": "gpu0", "vram_bytes": 1, "ram_bytes": 0}
    fields.update({"keep_alive_s": 60.0, "last_used": 900.0, **kw})
    return ModelView(name=name, state=ModelState.LOADED, **fields)  # type: ignore[arg-type]


async def test_a_pass_hands_its_effects_to_the_sink_in_order_and_reads_at_the_pace() -> None:
    books = Books(idle("old"), idle("new", last_used=990.0), idle("p", pinned=True))
    books.models["p"] = ModelView("p", ModelState.UNLOADED, None, 0, 0, pinned=True)
    applied: list[TickEffect] = []
    maintenance = Maintenance(books, applied.append)
    due = await maintenance.tick()
    assert applied == [Unload("old", "idle for 60 s (keep_alive)", sleep=True), BringBack("p")]
    assert due == pytest.approx(5.0)  # "new" expires in 50 s; the pace comes first
    assert books.reads == 1  # never read before
    books.clock += 1
    await maintenance.tick()
    assert books.reads == 1  # read a second ago: not again


async def test_the_loop_waits_for_the_next_timer_and_survives_a_failing_pass() -> None:
    books = Books(idle("a", last_used=998.0))
    books.last_read = books.clock
    books.stop_after_waits = 2
    calls: list[TickEffect] = []

    def explode(effect: TickEffect) -> None:
        calls.append(effect)
        raise RuntimeError("boom")

    await asyncio.wait_for(Maintenance(books, explode).run(), 5)
    assert books.waits == [pytest.approx(5.0), pytest.approx(5.0)]
    books = Books(idle("a", last_used=1000.0 - 58.0))
    books.last_read = books.clock
    await asyncio.wait_for(Maintenance(books, explode).run(), 5)
    assert books.waits == [pytest.approx(2.0)]  # a's keep-alive ends in 2 s
    assert calls == []
    books = Books(idle("a", last_used=0.0))
    books.last_read = books.clock
    await asyncio.wait_for(Maintenance(books, explode).run(), 5)
    assert [e.model for e in calls] == ["a"] and books.waits == [5.0]  # logged, retried


# -- the executor carrying a pass's effects out (fakes from test_residency) ---------------


async def test_a_model_unloaded_for_a_changed_config_is_then_kept_like_any_other() -> None:
    residency, adapter, _, clock = make({"a": 2})
    await use_once(residency, "a", clock)
    old = residency._ledger.entries["a"]
    fresh = ModelEntry(
        name="a",
        config=old.config,
        adapter=adapter,
        figure=old.figure,
        size_key="a, new context",
        pinned_by_config=False,
    )
    residency.replace_config(residency.resources, residency.scheduler, {"a": fresh})
    await residency.tick()
    await settled(residency, "a", ModelState.UNLOADED)
    assert residency.view("a").message == "config changed"
    await use_once(residency, "a", clock)
    await residency.tick()
    assert residency.view("a").state == ModelState.LOADED
    assert adapter.unloads == ["a"]
