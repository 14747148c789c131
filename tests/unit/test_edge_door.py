"""The endpoint's door: a cap on open connections, within the descriptor limit."""

from __future__ import annotations

import asyncio
import logging
import resource

import pytest

from helixd.edge import door
from helixd.edge.door import RESERVE_FDS, AcceptFailures, Door, connection_cap
from helixd.lognotes import INTERVAL_S


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_past_the_cap_a_connection_is_reset_counted_and_noted_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    open_now: list[object] = []
    served = asyncio.Protocol()
    gate = Door(lambda: served, lambda: open_now, cap=2, clock=lambda: now[0])
    assert gate() is served
    open_now += [1, 2]
    with caplog.at_level(logging.WARNING, "helixd.proxy"):
        for _ in range(5):
            turned = gate()
            transport = Transport()
            turned.connection_made(transport)
            assert turned is not served and transport.aborted
        now[0] += door.NOTE_INTERVAL_S
        gate()
    assert gate.turned_away.total == 6
    notes = [r.getMessage() for r in caplog.records if "turned away" in r.getMessage()]
    assert len(notes) == 2 and "turned away 1 new ones" in notes[0]
    assert "turned away 5 new ones" in notes[1]


def test_the_cap_leaves_descriptors_for_the_rest_of_helixd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert connection_cap(4096) == 1024 - RESERVE_FDS
    assert connection_cap(100) == 100
    monkeypatch.setattr(resource, "getrlimit", lambda _: (100, 4096))
    assert connection_cap(4096) == 1
    infinity = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda _: (infinity, infinity))
    assert connection_cap(4096) == 4096


def test_failed_accepts_are_noted_once_an_interval_without_tracebacks() -> None:
    now = [0.0]
    accepts = AcceptFailures(clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        try:
            raise OSError(24, "Too many open files")
        except OSError as exc:
            info = (type(exc), exc, exc.__traceback__)
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (), info)

    first = record("socket.accept() out of system resource\nsocket: <...>")
    assert accepts.filter(first) and first.levelno == logging.WARNING
    assert first.exc_info is None and "1 connections could not be accepted" in first.getMessage()
    assert not any(accepts.filter(record(AcceptFailures.MESSAGE)) for _ in range(500))
    other = record("Task exception was never retrieved")
    assert accepts.filter(other) and other.exc_info is not None  # anything else passes
    now[0] += INTERVAL_S
    later = record(AcceptFailures.MESSAGE)
    assert accepts.filter(later) and "501 connections" in later.getMessage()
