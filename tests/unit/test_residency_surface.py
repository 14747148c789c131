"""Residency's read-only surface: frozen views, queries, the lease and the event stream.

Everything outside ``helixd/scheduler/`` goes through these; no test here reaches into
the ledger. Fakes as in ``test_residency`` (an adapter and a GPU in process).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from pathlib import Path

import pytest

from helixd.errors import ResidencyError, UnknownModel
from helixd.providers.base import LoadError
from helixd.scheduler import (
    Changed,
    CountsChanged,
    Event,
    Evicted,
    LoadEnded,
    Measured,
    ModelState,
    ModelStatus,
    StateChanged,
)
from tests.unit.test_residency import holding, make, use_once

ROOT = Path(__file__).resolve().parents[2]


async def test_views_are_frozen_copies_that_do_not_follow_later_changes() -> None:
    residency, _, _, clock = make({"a": 2, "b": 2})
    before = residency.view("a")
    assert isinstance(before, ModelStatus) and before.state == ModelState.UNLOADED
    await use_once(residency, "a", clock)
    assert before.state == ModelState.UNLOADED  # a copy, not the record
    after = residency.view("a")
    assert (after.state, after.device, after.loaded) == (ModelState.LOADED, "gpu0", True)
    assert after.vram_bytes == 2 * 1024**3 and after.provider == "fake"
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.state = ModelState.UNLOADED  # type: ignore[misc]
    assert [m.name for m in residency.views()] == ["a", "b"]
    assert residency.names() == ["a", "b"]


async def test_an_unknown_name_is_refused_naming_the_known_ones_or_found_as_none() -> None:
    residency, _, _, _ = make({"a": 2})
    with pytest.raises(UnknownModel, match=r"no model named 'nope'; models: a"):
        residency.view("nope")
    assert residency.find("nope") is None
    assert residency.would_queue("nope") is False  # a lease would be refused at once


async def test_would_queue_says_whether_a_lease_now_waits_for_a_load_or_a_slot() -> None:
    residency, _, _, clock = make({"a": 2})
    assert residency.would_queue("a")  # not loaded: a lease would load it first
    await use_once(residency, "a", clock)
    assert not residency.would_queue("a")
    holds = [await holding(residency, "a") for _ in range(4)]  # max_concurrency: 4
    async with asyncio.timeout(10):
        while residency.view("a").in_flight < 4:
            await residency.wait_changed(1)
    assert residency.would_queue("a")  # every slot taken
    await holds[0].release()
    assert not residency.would_queue("a")
    for held in holds[1:]:
        await held.release()


async def test_a_lease_yields_the_model_as_it_was_when_the_slot_was_taken() -> None:
    residency, _, _, _ = make({"a": 2})
    async with residency.lease("a") as model:
        assert (model.name, model.state, model.in_flight) == ("a", ModelState.LOADED, 1)
        assert residency.view("a").in_flight == 1
    assert residency.view("a").in_flight == 0
    assert residency.view("a").last_used_wall is not None


async def test_every_subscriber_is_told_of_loads_states_counts_and_evictions_in_order() -> None:
    residency, _, _, clock = make({"a": 10, "b": 10, "c": 10})
    first: list[Event] = []
    second: list[Event] = []
    residency.events.subscribe(first.append)
    residency.events.subscribe(second.append)
    await use_once(residency, "a", clock)
    await use_once(residency, "b", clock)
    await use_once(residency, "c", clock)  # 24 GiB: the least recently used, a, goes
    assert first == second
    states = [(e.model, e.new) for e in first if isinstance(e, StateChanged)]
    assert states[:2] == [("a", ModelState.LOADING), ("a", ModelState.LOADED)]
    assert ("a", ModelState.UNLOADING) in states and ("a", ModelState.UNLOADED) in states
    assert [e.model for e in first if isinstance(e, Evicted)] == ["a"]
    loads = [e for e in first if isinstance(e, LoadEnded)]
    assert [(e.model, e.ok) for e in loads] == [("a", True), ("b", True), ("c", True)]
    counts = [(e.in_flight, e.queued) for e in first if isinstance(e, CountsChanged)]
    assert counts[:3] == [(0, 1), (1, 0), (0, 0)]  # waiting, served, done
    assert any(isinstance(e, Changed) for e in first)
    assert [e.model for e in first if isinstance(e, Measured)] == ["a", "b", "c"]


async def test_a_failed_load_is_told_with_its_error_and_a_refused_wait_drops_the_count() -> None:
    residency, adapter, _, clock = make({"x": 2})
    events: list[Event] = []
    residency.events.subscribe(events.append)
    adapter.fail_next = [LoadError("no such file")]
    with pytest.raises(ResidencyError, match="no such file"):
        await use_once(residency, "x", clock)
    ended = [e for e in events if isinstance(e, LoadEnded)]
    assert [(e.model, e.ok, e.error, e.out_of_memory) for e in ended] == [
        ("x", False, "no such file", False)
    ]
    counts = [(e.in_flight, e.queued) for e in events if isinstance(e, CountsChanged)]
    assert counts == [(0, 1), (0, 0)]  # the waiter left the queue, and said so


async def test_a_handler_that_raises_is_logged_and_the_others_are_still_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    residency, _, _, clock = make({"a": 2})
    told: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("observer bug")

    residency.events.subscribe(broken)
    residency.events.subscribe(told.append)
    with caplog.at_level(logging.ERROR, logger="helixd.scheduler"):
        await use_once(residency, "a", clock)
    assert residency.view("a").state == ModelState.LOADED  # residency went on
    assert any(isinstance(e, LoadEnded) for e in told)
    assert "an event handler failed" in caplog.text


async def test_an_unsubscribed_handler_hears_nothing_more() -> None:
    residency, _, _, clock = make({"a": 2})
    told: list[Event] = []
    unsubscribe = residency.events.subscribe(told.append)
    unsubscribe()
    unsubscribe()  # twice is harmless
    await use_once(residency, "a", clock)
    assert told == []


def test_nothing_outside_the_scheduler_touches_an_entry_or_sets_a_callback() -> None:
    """The surface is the only way in: no ModelEntry, no ``.models[``, no observer
    attribute assigned across packages (the issue's grep, kept)."""
    pattern = re.compile(
        r"ModelEntry|residency\.models|\.models\[|\.(on_change|on_load|on_evict|"
        r"on_load_outcome|remember)\s*=[^=]"
    )
    found = []
    for path in sorted((ROOT / "helixd").rglob("*.py")) + sorted((ROOT / "helixctl").rglob("*.py")):
        if path.is_relative_to(ROOT / "helixd" / "scheduler"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_the_scheduler_package_exports_its_surface() -> None:
    import helixd.scheduler as scheduler

    for name in ("Residency", "ModelStatus", "ModelState", "LoadEnded", "build_entries"):
        assert name in scheduler.__all__ and hasattr(scheduler, name)


async def test_restored_pins_apply_and_are_shown() -> None:
    residency, _, _, _ = make({"a": 2, "b": 2}, pinned={"b"})
    told: list[Event] = []
    residency.events.subscribe(told.append)
    residency.restore_pins({"a": True, "b": False})
    assert (residency.view("a").pinned, residency.view("b").pinned) == (True, False)
    assert residency.view("b").pinned_by_config is True
    assert any(isinstance(e, Changed) for e in told)
