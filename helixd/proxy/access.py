"""The endpoint's access log: one line a request, as ``logging`` would write it, for less.

Through ``logging``, a line costs about 16 µs (a LogRecord, a formatter, a time format,
a lock, a write and a flush: ``bench/access_log_cost.py``), several times what the
endpoint spends on a request's routing. When helixd's own logging set-up is in place
(one stream handler, one of the two formats ``helixd.cli`` installs), :class:`AccessLog`
formats the same line itself, the time string made once a second, and writes the lines
of one loop turn in one write; under any other set-up it hands each line to ``logging``.

``[proxy] access_log = false`` writes none; ``access_log_sample`` (0 to 1) writes that
share of the requests that succeeded; refusals and failures are always written. Metrics
count every request either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TextIO

from helixd.lognotes import BARE_FORMAT, TIMED_FORMAT

LOGGER = "helixd.access"
# The formats helixd.cli installs, and whether each starts with the time.
_FORMATS = {TIMED_FORMAT: True, BARE_FORMAT: False}


class AccessLog:
    """Writes access lines; see the module's docstring."""

    def __init__(self) -> None:
        self.logger = logging.getLogger(LOGGER)
        self.enabled = True
        self.sample = 1.0
        self._credit = 0.0
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""
        self._handler: logging.StreamHandler[TextIO] | None = None
        self._timed = False

    def configure(self, enabled: bool, sample: float) -> None:
        """Take up ``[proxy] access_log`` and ``access_log_sample``, and the logging set-up
        as it is now (at start and on reload)."""
        self.enabled, self.sample = enabled, sample
        self._handler = None
        root = logging.getLogger()
        if (
            self.logger.handlers
            or not self.logger.propagate
            or self.logger.filters
            or len(root.handlers) != 1
        ):
            return
        handler = root.handlers[0]
        formatter = handler.formatter
        if (
            type(handler) is not logging.StreamHandler
            or handler.filters
            or formatter is None
            or formatter._fmt not in _FORMATS  # the format string itself is the test
            or formatter.datefmt is not None
        ):
            return
        self._handler = handler
        self._timed = _FORMATS[formatter._fmt]

    def write(self, line: str, succeeded: bool) -> None:
        """Log ``line`` (no newline) unless the log is off, or sampled out (a success)."""
        if not self.enabled or not self.logger.isEnabledFor(logging.INFO):
            return
        if succeeded and self.sample < 1.0:
            self._credit += self.sample
            if self._credit < 1.0:
                return
            self._credit -= 1.0
        if self._handler is None:
            self.logger.info("%s", line)
            return
        if self._timed:
            now = time.time()
            second = int(now)
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            line = f"{self._stamp},{int((now - second) * 1000):03d} INFO {LOGGER}: {line}\n"
        else:
            line = f"INFO {LOGGER}: {line}\n"
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
            except RuntimeError:  # no loop (a test calling directly): write now
                self._pending.append(line)
                self._flush()
                return
        self._pending.append(line)

    def _flush(self) -> None:
        """The lines of one loop turn, in one write."""
        handler, lines = self._handler, self._pending
        self._pending = []
        if handler is None or not lines:
            return
        handler.acquire()
        try:
            handler.stream.write("".join(lines))
            handler.flush()
        except (OSError, ValueError):  # a closed or broken stderr: as logging, not fatal
            pass
        finally:
            handler.release()
