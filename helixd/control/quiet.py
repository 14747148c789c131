"""Client errors in the HTTP layer, logged as what they are: one WARNING an interval.

aiohttp (the control API's server) logs each request it cannot parse (a malformed
request line, a header too big, a length that lies) as an ERROR with a traceback. Those
are the client's faults, answered with a 400 already; a fuzzer or a port scanner would
otherwise fill the journal with tracebacks. :class:`ClientErrorFilter` turns them into
one line per interval, with how many there were and the latest reason; anything else
aiohttp logs passes unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

INTERVAL_S = 60.0


class ClientErrorFilter(logging.Filter):
    """Folds client-error records of one logger into a WARNING per interval."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._last: float | None = None
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError | ConnectionError):
            return True
        self._held += 1
        now = self._clock()
        if self._last is not None and now - self._last < INTERVAL_S:
            return False
        text = error.message if isinstance(error, HttpProcessingError) else str(error)
        reason = " ".join(str(text).split()) or type(error).__name__
        record.msg = "malformed HTTP requests from clients: %d since the last note (latest: %s)"
        record.args = (self._held, reason[:200])
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        self._last, self._held = now, 0
        return True


def quiet_client_errors(logger: str = "aiohttp.server") -> None:
    """Install the filter on ``logger`` once."""
    target = logging.getLogger(logger)
    if not any(isinstance(f, ClientErrorFilter) for f in target.filters):
        target.addFilter(ClientErrorFilter())
