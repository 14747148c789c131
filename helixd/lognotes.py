"""Records of one kind folded into one WARNING an interval, with how many there were.

A flood of client faults (malformed requests, a descriptor limit reached) is logged by
the libraries one ERROR with a traceback each, hundreds a second; the journal would fill
with what one line a minute says as well. :class:`FoldedRecords` is a logging filter:
the records its :meth:`~FoldedRecords.reason` picks become one WARNING an interval,
anything else passes unchanged. Also here: the formats of helixd's log lines, which the
access log writes itself (:mod:`helixd.proxy.access`). Imports nothing of helixd.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

INTERVAL_S = 60.0

# helixd's log lines (helixd.cli installs one): with the time on a terminal, without
# under journald, which stamps each line itself.
TIMED_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BARE_FORMAT = "%(levelname)s %(name)s: %(message)s"


class FoldedRecords(logging.Filter):
    """Folds the records :meth:`reason` picks; :meth:`note` words the WARNING."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._noted_at: float | None = None
        self._held = 0

    def reason(self, record: logging.LogRecord) -> str | None:
        """Why ``record`` is one to fold (its latest cause, in words), or None."""
        raise NotImplementedError

    def note(self, count: int, reason: str) -> tuple[str, tuple[object, ...]]:
        """The WARNING's message and arguments for ``count`` records since the last."""
        raise NotImplementedError

    def filter(self, record: logging.LogRecord) -> bool:
        reason = self.reason(record)
        if reason is None:
            return True
        self._held += 1
        now = self._clock()
        if self._noted_at is not None and now - self._noted_at < INTERVAL_S:
            return False
        record.msg, record.args = self.note(self._held, reason)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        self._noted_at, self._held = now, 0
        return True


def fold(logger: str, kind: type[FoldedRecords]) -> None:
    """Install a ``kind`` filter on ``logger``, once."""
    target = logging.getLogger(logger)
    if not any(isinstance(f, kind) for f in target.filters):
        target.addFilter(kind())
