"""The endpoint's HTTP server: a listening socket, its connections, and their limits.

:class:`EdgeServer` owns the connections (:class:`~helixd.edge.connection.Connection`),
admitted through a :class:`~helixd.edge.door.Door` so their number stays within the
descriptor limit, and hands each request to one ``handle`` coroutine. What it refuses on
its own (protocol junk, a head too large) it words through ``error_response`` and reports
through ``refused``, so the application logs and counts those answers as its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from helixd.edge.connection import Connection
from helixd.edge.door import Door, Tally, connection_cap, quiet_accept_failures
from helixd.edge.message import Request, Response, StreamResponse
from helixd.edge.routes import Handler

# How long a stop waits for answers under way before cutting them.
SHUTDOWN_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What a client may hold or send (``[proxy]``)."""

    header_timeout_s: float = 20.0
    idle_timeout_s: float = 75.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_body_bytes: int = 32 * 1024**2
    body_timeout_s: float = 60.0  # the whole body, from the first read of it
    max_connections: int = 4096


# Told of each request the server refused itself: its status and code.
Refused = Callable[[int, str], None]


class EdgeServer:
    """Serves ``handle`` on ``host:port`` until :meth:`stop`."""

    def __init__(
        self,
        handle: Handler,
        limits: Limits,
        error_response: Callable[[int, str, str], Response],
        refused: Refused,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handle: Handler = handle
        self.limits = limits
        self.error_response = error_response
        self._refused = refused
        self.connections: set[Connection] = set()
        self.door = Door(
            lambda: Connection(self),
            lambda: self.connections,
            connection_cap(limits.max_connections),
            clock,
        )
        self.too_slow = Tally(
            clock,
            f"endpoint: reset %d connections whose request head took over "
            f"{limits.header_timeout_s:g} s ([proxy] header_timeout_s) since the last note",
        )
        self.stalled = Tally(
            clock,
            f"endpoint: reset %d connections whose client took nothing of its answer for "
            f"{limits.idle_timeout_s:g} s ([proxy] idle_timeout_s) since the last note",
        )
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_gone: asyncio.Event | None = None  # set up by stop()
        # Deadlines fire within this much of their time: a fraction of the shortest.
        self.sweep_s = max(0.01, min(0.5, limits.header_timeout_s / 4, limits.idle_timeout_s / 4))
        self.port = 0

    def forget(self, connection: Connection) -> None:
        """A connection has closed (or never opened)."""
        self.connections.discard(connection)
        if not self.connections and self._all_gone is not None:
            self._all_gone.set()

    def refused(self, connection: Connection, status: int, code: str, message: str) -> None:
        """A request the connection refused itself: the application records it (its
        access line, its count, its note in the log)."""
        self._refused(status, code)

    async def start(self, host: str, port: int) -> None:
        """Listen; an address in use raises OSError for the caller to report."""
        quiet_accept_failures()
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self.door, host, port, reuse_address=True, backlog=1024
        )
        if self._listener.sockets:
            self.port = self._listener.sockets[0].getsockname()[1]
        self._sweeper = loop.call_later(self.sweep_s, self._sweep)

    def _sweep(self) -> None:
        """Fire the connections' deadlines that have passed; again in ``sweep_s``."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        try:
            for connection in [c for c in self.connections if 0.0 < c.due <= now]:
                connection.expire()
        finally:  # one failure must not end every deadline for good
            self._sweeper = loop.call_later(self.sweep_s, self._sweep)

    async def stop(self) -> None:
        """Stop accepting; let answers under way finish for a while, then cut them."""
        if self._listener is not None:
            self._listener.close()
        self._all_gone = asyncio.Event()
        for connection in list(self.connections):
            connection.shut()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_GRACE_S):
                    await self._all_gone.wait()
        for connection in list(self.connections):
            connection.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is not None:
            await self._listener.wait_closed()


__all__ = ["EdgeServer", "Limits", "Request", "Response", "StreamResponse"]
