"""The endpoint's door: how many connections it holds open at once.

Every open connection costs a file descriptor. Without a cap, a local client that opens
connections and sends nothing (loopback needs no key) exhausts helixd's descriptors, and
then the control socket cannot accept (``helixctl status`` hangs) and model servers
cannot be reached. :class:`Door` wraps the HTTP server's protocol factory: past the cap,
a new connection is reset at once (its descriptor freed), counted, and noted in the log
once a minute. The cap is ``[proxy] max_connections``, never more than the descriptor
limit minus :data:`RESERVE_FDS` for everything else helixd keeps open.
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


class Door:
    """A protocol factory that admits at most ``cap`` open connections of ``server``."""

    def __init__(
        self,
        server: Callable[[], asyncio.BaseProtocol],
        connections: Callable[[], Sized],
        cap: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._server = server
        self._connections = connections
        self.cap = cap
        self.turned_away = 0
        self._clock = clock
        self._noted_at: float | None = None
        self._since_note = 0

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self._connections()) < self.cap:
            return self._server()
        self.turned_away += 1
        self._since_note += 1
        now = self._clock()
        if self._noted_at is None or now - self._noted_at >= NOTE_INTERVAL_S:
            log.warning(
                "endpoint: %d connections open, the most allowed ([proxy] max_connections, "
                "within the descriptor limit); turned away %d new ones since the last note",
                self.cap,
                self._since_note,
            )
            self._noted_at, self._since_note = now, 0
        return _Turnaway()
