"""Where a process's output goes: a size-rotated log file, a ring of recent lines, followers.

Lines are written from the event loop as they are read from the child's pipes. File
writes are small appends to a file opened once, so they do not stall the loop in
practice; rotation (a rename or two) is rare.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger("helixd.supervisor")

RING_LINES = 1000
MAX_LINE_BYTES = 16 * 1024  # a runaway line (a binary dump) is cut, not buffered forever


@dataclass(frozen=True)
class LogLine:
    """One line of output: when, from which stream (``stdout``, ``stderr``, ``helixd``), what."""

    ts: float
    stream: str
    text: str

    def as_json(self) -> dict[str, object]:
        """The control API's shape."""
        return {"ts": self.ts, "stream": self.stream, "text": self.text}


class RotatingFile:
    """Append-only file that rolls over at ``max_bytes`` to ``.1`` … ``.backups``."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[bytes] | None = None
        self._size = 0

    def write(self, data: bytes) -> None:
        """Append ``data``, rolling over first when it would pass the limit."""
        if self._file is None:
            self._open()
        if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        assert self._file is not None
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def close(self) -> None:
        """Close the file; a later write opens it again."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._file = os.fdopen(fd, "ab")
        self._size = os.fstat(fd).st_size

    def _rotate(self) -> None:
        self.close()
        if self.backups == 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            for index in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{index}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{index + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()


class LogSink:
    """Fans one process's lines out to its file, its ring and any live followers."""

    def __init__(self, file: RotatingFile | None, ring_lines: int = RING_LINES) -> None:
        self.file = file
        self.ring: deque[LogLine] = deque(maxlen=ring_lines)
        self._file_failing = False
        self._followers: set[asyncio.Queue[LogLine | None]] = set()

    def emit(self, stream: str, text: str) -> None:
        """Record one line (without its newline)."""
        line = LogLine(time.time(), stream, text)
        self.ring.append(line)
        if self.file is not None:
            prefix = "" if stream == "stdout" else f"[{stream}] "
            try:
                self.file.write(f"{prefix}{text}\n".encode(errors="replace"))
                self._file_failing = False
            except OSError as exc:
                # A full disk must not take the supervisor down; the ring still has the line.
                self.file.close()
                if not self._file_failing:
                    log.warning("cannot write %s: %s (lines stay in memory)", self.file.path, exc)
                    self._file_failing = True
        for queue in self._followers:
            if queue.qsize() < 10_000:  # a stalled follower loses lines, it never grows memory
                queue.put_nowait(line)

    def tail(self, lines: int) -> list[LogLine]:
        """The last ``lines`` lines held in memory."""
        if lines <= 0:
            return []
        return list(self.ring)[-lines:]

    @contextlib.asynccontextmanager
    async def follow(self) -> AsyncIterator[asyncio.Queue[LogLine | None]]:
        """A queue that receives every new line until the context exits (``None`` = closed)."""
        queue: asyncio.Queue[LogLine | None] = asyncio.Queue()
        self._followers.add(queue)
        try:
            yield queue
        finally:
            self._followers.discard(queue)

    async def lines(self, tail: int, idle_s: float) -> AsyncGenerator[LogLine | None, None]:
        """The last ``tail`` lines, then each new one until the sink closes; ``None`` after
        every ``idle_s`` without a line, so a follower can check that its reader is there."""
        async with self.follow() as queue:
            for line in self.tail(tail):
                yield line
            while True:
                try:
                    async with asyncio.timeout(idle_s):
                        line_or_end = await queue.get()
                except TimeoutError:
                    yield None
                    continue
                if line_or_end is None:
                    return
                yield line_or_end

    def close(self) -> None:
        """Wake followers so their streams end, and close the file."""
        for queue in self._followers:
            queue.put_nowait(None)
        if self.file is not None:
            self.file.close()


def split_lines(buffer: bytearray, chunk: bytes) -> Iterator[str]:
    """Append ``chunk`` to ``buffer`` and yield the complete lines it now holds."""
    buffer.extend(chunk)
    while True:
        newline = buffer.find(b"\n")
        if newline < 0:
            if len(buffer) > MAX_LINE_BYTES:
                yield buffer[:MAX_LINE_BYTES].decode(errors="replace")
                del buffer[:MAX_LINE_BYTES]
                continue
            return
        line = buffer[:newline]
        del buffer[: newline + 1]
        yield line.rstrip(b"\r").decode(errors="replace")


def attach_pipes(sink: LogSink, popen: subprocess.Popen[bytes]) -> None:
    """Send a child's stdout and stderr to ``sink``, line by line, from the event loop."""
    loop = asyncio.get_running_loop()
    for stream_name, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
        if pipe is None:
            continue
        # Own a duplicate of the fd and let Popen's file object go, so exactly one
        # close() ever touches it.
        fd = os.dup(pipe.fileno())
        pipe.close()
        os.set_blocking(fd, False)
        buffer = bytearray()

        def on_readable(fd: int = fd, name: str = stream_name, buf: bytearray = buffer) -> None:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                loop.remove_reader(fd)
                if buf:
                    sink.emit(name, buf.decode(errors="replace"))
                with contextlib.suppress(OSError):
                    os.close(fd)
                return
            for line in split_lines(buf, chunk):
                sink.emit(name, line)

        loop.add_reader(fd, on_readable)
