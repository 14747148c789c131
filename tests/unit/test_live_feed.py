"""The live feed: coalesced snapshots, request records, slow followers, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from helixd.proxy.attempt import RequestRecord
from helixd.ui import feed as feed_module
from helixd.ui.document import LiveInputs
from helixd.ui.feed import FeedRefused, LiveFeed, RequestRates

DEADLINE_S = 5.0


def inputs() -> LiveInputs:
    return LiveInputs(
        version="0",
        host="h",
        started_at=0.0,
        summary="",
        models=[{"name": "tiny", "state": "loaded"}],
        eviction_order=[],
        devices={"mode": "unknown", "gpus": [], "ram": None},
        providers=[],
        alerts=[],
        jobs=[],
        spend={},
        actions=True,
        auth=False,
    )


def record(t: float, model: str = "tiny") -> RequestRecord:
    return RequestRecord(t, "POST", "/v1/chat/completions", model, None, model, 200, 5.0, 1.0, 1)


class Counting:
    """The gather call, counting how often a document is built."""

    def __init__(self) -> None:
        self.builds = 0

    def __call__(self) -> LiveInputs:
        self.builds += 1
        return inputs()


async def test_a_follower_starts_with_the_document_now() -> None:
    feed = LiveFeed(inputs, clock=lambda: 100.0)
    async with feed.follow() as follower:
        first = await follower.next(DEADLINE_S)
    assert first is not None and first[0] == "snapshot"
    assert json.loads(first[1])["time"] == 100.0


async def test_a_burst_of_requests_is_one_snapshot_with_its_records() -> None:
    gather = Counting()
    feed = LiveFeed(gather, clock=lambda: 100.0, max_rate_hz=1000.0, heartbeat_s=60.0)
    feed.start()
    try:
        async with feed.follow() as follower:
            await follower.next(DEADLINE_S)  # the first snapshot
            built = gather.builds
            for i in range(200):
                feed.request_finished(record(100.0 + i / 1000))
            kinds = []
            while True:
                got = await follower.next(DEADLINE_S)
                assert got is not None
                kinds.append(got[0])
                if got[0] == "snapshot":
                    break
            snapshot = json.loads(got[1])
    finally:
        await feed.close()
    # The view shows 50 requests: only the last 50 are sent, then one snapshot.
    assert kinds == ["request"] * feed_module.KEEP_REQUESTS + ["snapshot"]
    assert gather.builds == built + 1
    assert len(snapshot["requests"]) == feed_module.KEEP_REQUESTS
    assert snapshot["models"][0]["requests_per_min"] == 200.0


async def test_changes_without_followers_build_nothing() -> None:
    gather = Counting()
    feed = LiveFeed(gather, max_rate_hz=1000.0, heartbeat_s=0.01)
    feed.start()
    try:
        for i in range(10):
            feed.changed()
            feed.request_finished(record(float(i)))
        await asyncio.sleep(0.05)  # several heartbeats' time: nothing must be built
    finally:
        await feed.close()
    assert gather.builds == 0


async def test_a_quiet_feed_still_beats() -> None:
    feed = LiveFeed(inputs, max_rate_hz=1000.0, heartbeat_s=0.01)
    feed.start()
    try:
        async with feed.follow() as follower:
            for _ in range(3):
                got = await follower.next(DEADLINE_S)
                assert got is not None and got[0] == "snapshot"
    finally:
        await feed.close()


async def test_a_follower_that_does_not_read_is_dropped() -> None:
    feed = LiveFeed(inputs, max_rate_hz=1000.0, heartbeat_s=60.0)
    feed.start()
    try:
        async with feed.follow() as slow:
            async with asyncio.timeout(DEADLINE_S):
                while slow.ended is None:
                    feed.request_finished(record(1.0))
                    await asyncio.sleep(0)
            assert await slow.next(DEADLINE_S) is None
            assert "behind" in (slow.ended or "")
            assert feed.followers == 0
    finally:
        await feed.close()


async def test_closing_ends_every_follower() -> None:
    feed = LiveFeed(inputs)
    feed.start()
    async with feed.follow() as follower:
        await follower.next(DEADLINE_S)
        await feed.close()
        assert await follower.next(DEADLINE_S) is None
        assert follower.ended == "helixd is stopping"


async def test_a_failing_view_is_logged_and_the_feed_goes_on() -> None:
    calls = {"n": 0}

    def flaky() -> LiveInputs:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("a view broke")
        return inputs()

    feed = LiveFeed(flaky, max_rate_hz=1000.0, heartbeat_s=0.01)
    feed.start()
    try:
        async with feed.follow() as follower:
            await follower.next(DEADLINE_S)
            got = await follower.next(DEADLINE_S)  # after the failed build, the next one
            assert got is not None and got[0] == "snapshot"
    finally:
        await feed.close()
    assert calls["n"] >= 3


def test_request_rates_cover_the_last_minute() -> None:
    rates = RequestRates()
    for t in (0.0, 0.5, 30.0, 59.9):
        rates.count("a", t)
    rates.count("b", 10.0)
    assert rates.per_minute(59.9) == {"a": 4.0, "b": 1.0}
    assert rates.per_minute(60.5) == {"a": 2.0, "b": 1.0}  # second 0 left the window
    assert rates.per_minute(200.0) == {}


async def test_too_many_followers_are_refused_and_a_closed_feed_takes_none() -> None:
    feed = LiveFeed(inputs)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(feed_module.MAX_FOLLOWERS):
            await stack.enter_async_context(feed.follow())
        with pytest.raises(FeedRefused) as refused:
            await stack.enter_async_context(feed.follow())
        assert refused.value.code == "too_many_followers"
    assert feed.followers == 0
    await feed.close()
    with pytest.raises(FeedRefused) as refused:
        async with feed.follow():
            pass
    assert refused.value.code == "stopping"
