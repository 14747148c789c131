"""The access log's own writer: the same lines logging would write, sampling, off."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import pytest

from helixd.lognotes import BARE_FORMAT, TIMED_FORMAT
from helixd.proxy.access import AccessLog

TIMED, BARE = TIMED_FORMAT, BARE_FORMAT  # the formats helixd.cli installs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """helixd's logging set-up (helixd.cli) on a string, restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    sink = io.StringIO()
    root.handlers[:] = []
    yield sink
    root.handlers[:], root.level = saved


def install(sink: io.StringIO, fmt: str) -> None:
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


async def written(log: AccessLog, lines: list[tuple[str, bool]]) -> None:
    for line, succeeded in lines:
        log.write(line, succeeded)
    await asyncio.sleep(0)  # the lines of one loop turn are written at its end


@pytest.mark.parametrize("fmt", [TIMED, BARE])
async def test_the_lines_are_those_logging_writes(stream: io.StringIO, fmt: str) -> None:
    install(stream, fmt)
    log = AccessLog()
    log.configure(enabled=True, sample=1.0)
    await written(log, [("POST /v1/chat/completions status=200", True), ("x refused", False)])
    ours = stream.getvalue().splitlines()
    stream.truncate(0)
    stream.seek(0)
    logging.getLogger("helixd.access").info("POST /v1/chat/completions status=200")
    theirs = stream.getvalue().splitlines()
    assert len(ours) == 2 and ours[1].endswith("INFO helixd.access: x refused")
    if fmt == TIMED:  # the same but for the milliseconds that passed
        assert ours[0][:19] == theirs[0][:19] and ours[0][23:] == theirs[0][23:]
    else:
        assert ours[0] == theirs[0]


async def test_sampling_keeps_that_share_of_successes_and_every_failure(
    stream: io.StringIO,
) -> None:
    install(stream, BARE)
    log = AccessLog()
    log.configure(enabled=True, sample=0.25)
    await written(log, [(f"ok {n}", True) for n in range(100)] + [("failed", False)] * 3)
    lines = stream.getvalue().splitlines()
    assert sum("ok" in line for line in lines) == 25
    assert sum("failed" in line for line in lines) == 3


async def test_off_writes_nothing_and_a_raised_level_is_obeyed(stream: io.StringIO) -> None:
    install(stream, BARE)
    log = AccessLog()
    log.configure(enabled=False, sample=1.0)
    await written(log, [("failed", False)])
    log.configure(enabled=True, sample=1.0)
    logging.getLogger().setLevel(logging.WARNING)  # log_level = "warning" (a reload)
    await written(log, [("failed", False)])
    assert stream.getvalue() == ""


async def test_any_other_logging_set_up_gets_the_line_through_logging(
    stream: io.StringIO,
) -> None:
    install(stream, "%(message)s")  # not one of helixd's formats: its formatter writes
    log = AccessLog()
    log.configure(enabled=True, sample=1.0)
    await written(log, [("GET /x status=404", False)])
    assert stream.getvalue() == "GET /x status=404\n"
