"""aiohttp's client-error tracebacks folded into one WARNING an interval."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import BadHttpMessage

from helixd.control.quiet import INTERVAL_S, ClientErrorFilter


def record(error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (), exc_info
    )


def test_client_errors_become_one_warning_an_interval() -> None:
    now = [0.0]
    quiet = ClientErrorFilter(clock=lambda: now[0])
    first = record(BadHttpMessage("Invalid header"))
    assert quiet.filter(first)
    assert first.levelno == logging.WARNING and first.exc_info is None
    assert "1 since the last note" in first.getMessage()
    assert "Invalid header" in first.getMessage()
    assert not any(quiet.filter(record(BadHttpMessage("x"))) for _ in range(5))
    now[0] += INTERVAL_S
    later = record(ConnectionResetError("reset"))
    assert quiet.filter(later) and "6 since the last note" in later.getMessage()


def test_other_records_pass_unchanged() -> None:
    quiet = ClientErrorFilter(clock=lambda: 0.0)
    plain = record(None)
    bug = record(ValueError("a bug"))
    assert quiet.filter(plain) and quiet.filter(bug)
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
