"""The endpoint's door: how many connections it holds open at once.

Every open connection costs a file descriptor. Without a cap, a local client that opens
connections and sends nothing (loopback needs no key) exhausts helixd's descriptors, and
then the control socket cannot accept (``helixctl status`` hangs) and model servers
cannot be reached. :class:`Door` wraps the HTTP server's protocol factory: past the cap,
a new connection is reset at once (its descriptor freed), counted, and noted in the log
once a minute. The cap is ``[proxy] max_connections``, never more than the descriptor
limit minus :data:`RESERVE_FDS` for everything else helixd keeps open. A connection
admitted must bring its first request head within ``[proxy] header_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable, Sized

log = logging.getLogger("helixd.proxy")

# Descriptors kept for the control socket, model servers, log files, NVML and the state.
RESERVE_FDS = 256
NOTE_INTERVAL_S = 60.0


def connection_cap(configured: int) -> int:
    """``configured``, lowered to fit the process's descriptor limit with the reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - RESERVE_FDS))


class _Turnaway(asyncio.Protocol):
    """A connection past the cap: reset at once, so its descriptor is freed now."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:
            transport.close()


class _HeadDeadline(asyncio.Protocol):
    """An admitted connection whose first request head must arrive within ``timeout``.

    A slowloris client trickles a header line every few seconds and holds its connection
    (and a descriptor) for ever: aiohttp has no header timeout, and the idle timeout only
    runs between requests. This wraps aiohttp's protocol, passing everything through, and
    resets the connection when the blank line ending the first head has not come in time.
    """

    def __init__(self, inner: asyncio.Protocol, timeout: float, expired: Callable[[], None]):
        self._inner = inner
        self._timeout = timeout
        self._expired = expired
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen or b"\n\n" in seen:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _expire(self) -> None:
        self._timer = None
        self._expired()
        if isinstance(self._transport, asyncio.Transport):
            self._transport.abort()
        elif self._transport is not None:
            self._transport.close()


class _Tally:
    """Counts an event; says so in the log at most once per :data:`NOTE_INTERVAL_S`."""

    def __init__(self, clock: Callable[[], float], message: str) -> None:
        self._clock = clock
        self._message = message  # formatted with the count since the last note
        self.total = 0
        self._noted_at: float | None = None
        self._noted_total = 0

    def count(self) -> None:
        self.total += 1
        now = self._clock()
        if self._noted_at is None or now - self._noted_at >= NOTE_INTERVAL_S:
            log.warning(self._message, self.total - self._noted_total)
            self._noted_at, self._noted_total = now, self.total


class Door:
    """A protocol factory that admits at most ``cap`` open connections of ``server``."""

    def __init__(
        self,
        server: Callable[[], asyncio.BaseProtocol],
        connections: Callable[[], Sized],
        cap: int,
        head_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._server = server
        self._connections = connections
        self.cap = cap
        self._head_timeout_s = head_timeout_s
        self.turned_away = _Tally(
            clock,
            f"endpoint: {cap} connections open, the most allowed ([proxy] max_connections, "
            "within the descriptor limit); turned away %d new ones since the last note",
        )
        self.too_slow = _Tally(
            clock,
            f"endpoint: reset %d connections whose request head took over "
            f"{head_timeout_s or 0:g} s ([proxy] header_timeout_s) since the last note",
        )

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self._connections()) < self.cap:
            protocol = self._server()
            if self._head_timeout_s is None or not isinstance(protocol, asyncio.Protocol):
                return protocol
            return _HeadDeadline(protocol, self._head_timeout_s, self.too_slow.count)
        self.turned_away.count()
        return _Turnaway()
