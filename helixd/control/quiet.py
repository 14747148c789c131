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

from aiohttp.http_exceptions import HttpProcessingError

from helixd.lognotes import INTERVAL_S, FoldedRecords, fold

__all__ = ["INTERVAL_S", "ClientErrorFilter", "quiet_client_errors"]


class ClientErrorFilter(FoldedRecords):
    """Folds aiohttp's client-error records into a WARNING per interval."""

    def reason(self, record: logging.LogRecord) -> str | None:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError | ConnectionError):
            return None
        text = error.message if isinstance(error, HttpProcessingError) else str(error)
        return " ".join(str(text).split()) or type(error).__name__

    def note(self, count: int, reason: str) -> tuple[str, tuple[object, ...]]:
        message = "malformed HTTP requests from clients: %d since the last note (latest: %s)"
        return message, (count, reason[:200])


def quiet_client_errors(logger: str = "aiohttp.server") -> None:
    """Install the filter on ``logger`` once."""
    fold(logger, ClientErrorFilter)
