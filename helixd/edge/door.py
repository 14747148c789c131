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

from helixd.lognotes import FoldedRecords, fold

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


class Tally:
    """Counts an event; says so in the log at most once per :data:`NOTE_INTERVAL_S`, so a
    flood of bad clients cannot flood the log."""

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._server = server
        self._connections = connections
        self.cap = cap
        self.turned_away = Tally(
            clock,
            f"endpoint: {cap} connections open, the most allowed ([proxy] max_connections, "
            "within the descriptor limit); turned away %d new ones since the last note",
        )

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self._connections()) < self.cap:
            return self._server()
        self.turned_away.count()
        return _Turnaway()


class AcceptFailures(FoldedRecords):
    """asyncio's own loop logs every failed ``accept()`` (out of descriptors: EMFILE) with
    a traceback, hundreds a second while the limit is reached; this folds them into one
    WARNING an interval. (uvloop's libuv drops such connections itself, with a descriptor
    it keeps spare, and logs nothing.)"""

    MESSAGE = "socket.accept() out of system resource"

    def reason(self, record: logging.LogRecord) -> str | None:
        return "EMFILE" if str(record.msg).startswith(self.MESSAGE) else None

    def note(self, count: int, reason: str) -> tuple[str, tuple[object, ...]]:
        message = (
            "out of file descriptors: %d connections could not be accepted since the last "
            "note (raise LimitNOFILE, or lower [proxy] max_connections)"
        )
        return message, (count,)


def quiet_accept_failures() -> None:
    """Install :class:`AcceptFailures` on asyncio's logger, once."""
    fold("asyncio", AcceptFailures)
