"""The live feed: the live document streamed to every follower, as things change.

Whatever changes (a model's state or queue, a provider, a finished request) marks the feed
dirty; one task builds the document at most :data:`MAX_RATE_HZ` times a second, encodes it
once and hands the same text to every follower, so a burst of a thousand requests costs
four documents, not a thousand. A snapshot also goes out every :data:`HEARTBEAT_S` while
nothing changes, so countdowns move and a follower can tell a quiet helixd from a lost
connection. Finished requests go out as their own records with the next snapshot (at most
:data:`KEEP_REQUESTS` a tick: the view shows no more).

A follower that does not read (a suspended ``helixctl top``, a stalled tab) is dropped
once :data:`QUEUE_LIMIT` records wait for it, so it never holds helixd's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from helixd.errors import HelixError
from helixd.proxy.attempt import RequestRecord
from helixd.ui.document import LiveInputs, live_document

log = logging.getLogger("helixd.ui")

MAX_RATE_HZ = 4.0
HEARTBEAT_S = 5.0
KEEP_REQUESTS = 50
QUEUE_LIMIT = 64
# Followers at once: pages and tops are a handful; a flood of streams is refused.
MAX_FOLLOWERS = 32
RATE_WINDOW_S = 60

# What a follower gets: ("snapshot" | "request", the data as JSON text); None: it ended.
Record = tuple[str, str]


class FeedRefused(HelixError):
    """No follower now: helixd is stopping, or too many follow already."""

    code = "feed_refused"

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class Follower:
    """One reader of the feed (a page's event stream, a ``helixctl top``)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue(QUEUE_LIMIT)
        self.ended: str | None = None  # why the feed ended it, once it has

    def put(self, record: Record) -> bool:
        """Queue ``record``; False when the follower is too far behind (then it is ended)."""
        if self.ended is not None:
            return False
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.end(f"fell {QUEUE_LIMIT} records behind")
            return False
        return True

    def end(self, why: str) -> None:
        """Tell the reader to stop, dropping what it has not read."""
        if self.ended is not None:
            return
        self.ended = why
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def records(self) -> AsyncIterator[Record]:
        """Every record, then ``("end", {"reason"})`` once the feed has ended this one."""
        while (record := await self.next()) is not None:
            yield record
        yield "end", _encode({"reason": self.ended or "ended"})

    async def next(self, timeout: float | None = None) -> Record | None:
        """The next record; None once ended; TimeoutError after ``timeout`` of silence."""
        async with asyncio.timeout(timeout):
            return await self._queue.get()


class RequestRates:
    """Requests per minute by model, over the last minute, in per-second buckets (O(1))."""

    def __init__(self) -> None:
        self._buckets: dict[str, deque[list[int]]] = {}

    def count(self, model: str, now: float) -> None:
        second = int(now)
        buckets = self._buckets.setdefault(model, deque())
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
        else:
            buckets.append([second, 1])
        self._trim(buckets, second)

    def per_minute(self, now: float) -> dict[str, float]:
        second = int(now)
        rates = {}
        for model, buckets in list(self._buckets.items()):
            self._trim(buckets, second)
            if buckets:
                rates[model] = float(sum(n for _, n in buckets)) * 60 / RATE_WINDOW_S
            else:
                del self._buckets[model]
        return rates

    @staticmethod
    def _trim(buckets: deque[list[int]], second: int) -> None:
        while buckets and buckets[0][0] <= second - RATE_WINDOW_S:
            buckets.popleft()


class LiveFeed:
    """Builds the live document from ``gather`` and streams it to followers."""

    def __init__(
        self,
        gather: Callable[[], LiveInputs],
        refresh: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        max_rate_hz: float = MAX_RATE_HZ,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self._gather = gather
        self._refresh = refresh  # fresh GPU and RAM figures before a document is built
        self._clock = clock
        self._min_gap_s = 1.0 / max_rate_hz
        self._heartbeat_s = heartbeat_s
        # Records, not their JSON: a request costs an append; only what is sent is encoded.
        self._requests: deque[RequestRecord] = deque(maxlen=KEEP_REQUESTS)
        self._unsent: deque[RequestRecord] = deque(maxlen=KEEP_REQUESTS)
        self._rates = RequestRates()
        self._followers: set[Follower] = set()
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    # -- what happens ------------------------------------------------------------------

    def changed(self, _event: object = None) -> None:
        """Something the document shows changed (a handler for any hub's events)."""
        if self._followers:
            self._dirty.set()

    def request_finished(self, record: RequestRecord) -> None:
        """The endpoint finished a request (a handler for the proxy's ``finished`` hub)."""
        self._requests.append(record)
        self._rates.count(record.model or record.asked, record.time)
        if self._followers:
            self._unsent.append(record)
            self._dirty.set()

    # -- the document ------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """The live document now."""
        now = self._clock()
        requests = [r.as_json() for r in self._requests]
        return live_document(self._gather(), requests, self._rates.per_minute(now), now)

    @contextlib.asynccontextmanager
    async def follow(self) -> AsyncIterator[Follower]:
        """A new follower, its first record already queued: the document now."""
        await self._fresh_figures()
        if self.closed:
            raise FeedRefused("helixd is shutting down", "stopping")
        if len(self._followers) >= MAX_FOLLOWERS:
            raise FeedRefused(
                f"{MAX_FOLLOWERS} live views are open already; close one", "too_many_followers"
            )
        follower = Follower()
        follower.put(("snapshot", _encode(self.document())))
        self._followers.add(follower)
        try:
            yield follower
        finally:
            self._followers.discard(follower)

    @property
    def followers(self) -> int:
        """How many follow the feed now."""
        return len(self._followers)

    # -- the loop ----------------------------------------------------------------------

    def start(self) -> None:
        """Start sending (on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="live-feed")

    async def close(self) -> None:
        """Stop sending and end every follower (helixd is stopping)."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for follower in tuple(self._followers):
            follower.end("helixd is stopping")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat_s):
                    await self._dirty.wait()
            self._dirty.clear()
            if self._followers:
                try:
                    await self._fresh_figures()
                    self._send()
                except Exception:
                    # A bad view must not end the feed for good: log it, try next tick.
                    log.exception("building the live document failed")
            await asyncio.sleep(self._min_gap_s)

    async def _fresh_figures(self) -> None:
        """GPU and RAM figures read now (at most one read a second), not the last ones."""
        if self._refresh is not None:
            await self._refresh()

    def _send(self) -> None:
        records = [("request", _encode(r.as_json())) for r in self._unsent]
        self._unsent.clear()
        records.append(("snapshot", _encode(self.document())))
        for follower in tuple(self._followers):
            for record in records:
                if not follower.put(record):
                    self._followers.discard(follower)
                    log.info("live view: dropped a follower that %s", follower.ended)
                    break


def _encode(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)
