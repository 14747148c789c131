"""Health probes must honour cancellation, even one that races with their completion."""

from __future__ import annotations

import asyncio

import pytest

from helixd.supervisor import health
from helixd.supervisor.spec import HealthProbe


async def test_cancel_that_races_with_completion_is_not_swallowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The CI hang: SIGTERM arrived just as a start probe passed. Python 3.11's wait_for
    # returned the probe's result instead of raising CancelledError, the run loop went on
    # to "ready", and the stop that had cancelled it waited for ever.
    finish = asyncio.Event()

    async def probe_that_finishes_on_cue(*_: object) -> health.ProbeResult:
        await finish.wait()
        return health.ProbeResult(True, "HTTP 200")

    monkeypatch.setattr(health, "_probe", probe_that_finishes_on_cue)
    probe = HealthProbe(kind="http", path="/health", interval_s=1.0, timeout_s=5.0, failures=3)
    task = asyncio.create_task(health.probe(probe, "127.0.0.1", 1))
    await asyncio.sleep(0)  # the probe is now waiting
    finish.set()
    await asyncio.sleep(0)  # under wait_for: the inner probe completes, the outer has not woken
    if task.cancel():
        # A cancel accepted by a task that has not finished must end it cancelled.
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        assert task.result().ok  # it had completed already: nothing was swallowed
