"""The endpoint's client to the model servers: pooled keep-alive connections, answers
parsed by httptools and handed on as they arrive.

One :class:`Pool` per endpoint. :meth:`Pool.post` sends a request and returns once the
status line and headers are in; the body is then read whole (:meth:`Answer.read`), up
to a cap (:meth:`Answer.read_bounded`) or chunk by chunk as the server sends it
(:meth:`Answer.chunks`), never buffered past :data:`READ_HIGH_WATER` (reading from the
socket pauses until the relay catches up). A connection goes back to the pool only once
its answer was read to the end and the server keeps it alive.

Failures are :class:`UpstreamIOError`: :class:`ConnectFailed` (nothing listens, a name
that does not resolve, TLS refused), :class:`ClosedEarly` (the connection closed before
any answer: a pooled one the server dropped while idle; the caller may send again),
:class:`AnswerCut` (the answer stopped part way, or was not HTTP). Silence longer than
``read_timeout_s`` raises :class:`TimeoutError`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from helixd.errors import EndpointError

# Unread answer bytes past which the connection stops reading from the socket.
READ_HIGH_WATER = 256 * 1024
# Idle pooled connections kept per server, and for how long.
MAX_IDLE_PER_SERVER = 64
IDLE_S = 30.0
# Request targets whose parsed form is kept (a few per model server).
MAX_TARGETS = 1024


class UpstreamIOError(EndpointError):
    """The exchange with a model's server failed at the connection or HTTP level."""

    code = "upstream_io"


class ConnectFailed(UpstreamIOError):
    """No connection: nothing listens there, the name does not resolve, TLS refused."""

    code = "connect_failed"


class ClosedEarly(UpstreamIOError):
    """The connection closed before the answer's status line."""

    code = "closed_early"


class AnswerCut(UpstreamIOError):
    """The answer stopped part way (the server closed or sent what is not HTTP)."""

    code = "answer_cut"


Server = tuple[str, str, int]  # scheme, host, port


class _Link(asyncio.Protocol):
    """One connection to a server, one exchange at a time."""

    def __init__(self, pool: Pool, server: Server) -> None:
        self.pool = pool
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.status = 0
        self.raw_headers: list[tuple[str, str]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamIOError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.delimited = False  # by Content-Length or chunked; else by the close
        self.paused = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"the model's server sent what is not HTTP ({exc})")
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.forget(self)
        if self.complete:
            return
        if self.head.done() and not self.delimited:
            self.complete = True  # an answer that ends with its connection (HTTP/1.0)
            self._wake()
            return
        self._fail(None)

    def _fail(self, why: str | None) -> None:
        if not self.head.done():
            error: UpstreamIOError = ClosedEarly(
                why or "the model's server disconnected before answering"
            )
            self.head.set_exception(error)
            self.head.exception()  # retrieved: a caller that gave up must not warn
        else:
            error = AnswerCut(why or "the connection closed before the answer was complete")
        if self.error is None and not self.complete:
            self.error = error
            self._wake()

    # -- httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        names = {name.lower() for name, _ in self.raw_headers}
        self.delimited = "content-length" in names or "transfer-encoding" in names
        if self.status < 200 or self.status in (204, 304):
            self.delimited = True
        if 100 <= self.status < 200:
            self.raw_headers = []  # an interim answer: the real one follows
            return
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            return
        self.complete = True
        # Asked now: llhttp forgets it once the callback returns.
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- the exchange ------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def next_chunk(self, timeout: float) -> bytes:
        """The next piece of the body; ``b""`` at its end."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            await self._wait(timeout)
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered <= READ_HIGH_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    async def _wait(self, timeout: float) -> None:
        """Until the parser has news; :class:`TimeoutError` after ``timeout`` of silence.
        (A bare timer: ``asyncio.timeout`` costs several times more, per chunk.)"""
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    async def wait_head(self, timeout: float) -> None:
        """Until the answer's status line and headers are in."""
        timer = self.loop.call_later(timeout, _expire, self.head)
        try:
            await self.head
        finally:
            timer.cancel()

    def reusable(self) -> bool:
        return (
            self.complete
            and self.error is None
            and not self.lost
            and self.keep_alive
            and not self.chunks  # all read (a bounded read may stop short)
            and not self.paused
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no data from the model's server within the timeout"))


class Answer:
    """A server's answer: status and headers now, the body as it is read."""

    def __init__(self, link: _Link, read_timeout_s: float) -> None:
        self._link = link
        self._timeout = read_timeout_s
        self.status = link.status
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(link.raw_headers))
        self._released = False

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it comes."""
        while chunk := await self._link.next_chunk(self._timeout):
            yield chunk

    async def lines(self) -> AsyncIterator[bytes]:
        """The body line by line (each with its newline, the last maybe without)."""
        pending = b""
        async for chunk in self.chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line + b"\n"
        if pending:
            yield pending

    async def read(self) -> bytes:
        """The whole body."""
        link, parts = self._link, []
        while chunk := await link.next_chunk(self._timeout):
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_bounded(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body; the rest is left unread (and the
        connection is not reused)."""
        parts: list[bytes] = []
        size = 0
        while size < limit and (chunk := await self._link.next_chunk(self._timeout)):
            parts.append(chunk[: limit - size])
            size += len(parts[-1])
        return b"".join(parts)

    async def json(self) -> Any:
        return json.loads(await self.read())

    def release(self) -> None:
        """Back to the pool if the answer was read to its end, else closed."""
        if self._released:
            return
        self._released = True
        self._link.pool.give_back(self._link)

    async def __aenter__(self) -> Answer:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()


def _target(url: str) -> tuple[Server, str]:
    """The server ``url`` names, and the request line and fixed headers for it."""
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    if scheme not in ("http", "https"):
        raise ConnectFailed(f"{url}: only http and https are supported")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    netloc = host if parts.port is None else f"{host}:{port}"
    return (scheme, host, port), f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: helixd\r\n"


class Pool:
    """Keep-alive connections to the model servers, by scheme, host and port."""

    def __init__(
        self,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._clock = clock
        self._idle: dict[Server, list[_Link]] = {}
        self._busy: set[_Link] = set()
        self._tls: ssl.SSLContext | None = None
        self._targets: dict[str, tuple[Server, str]] = {}
        self.reused = 0  # exchanges on a pooled connection (for the tests and the bench)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[Answer, bool]:
        """POST ``body`` to ``url``; the answer once its head is in, and whether it came
        on a pooled connection (one the server may have dropped meanwhile)."""
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _target(url)
            if len(self._targets) > MAX_TARGETS:  # bounded: urls come from the config
                self._targets.pop(next(iter(self._targets)))
        server, start = target
        lines = [start]
        json_body = True
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                # A key read from a file with its newline, say: not sent, and said so.
                raise ConnectFailed(
                    f"not sent: its {name} header holds a line break (check the key or "
                    "header the provider's config gives it)"
                )
            if name.lower() == "content-type":
                json_body = False
            lines.append(f"{name}: {value}\r\n")
        if json_body:
            lines.append("Content-Type: application/json\r\n")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        message = "".join(lines).encode("latin-1") + body
        link, pooled = await self._acquire(server)
        link.send(message)
        try:
            await link.wait_head(self.read_timeout_s)
        except BaseException:
            link.close()
            self._busy.discard(link)
            raise
        return Answer(link, self.read_timeout_s), pooled

    async def _acquire(self, server: Server) -> tuple[_Link, bool]:
        idle = self._idle.get(server)
        now = self._clock()
        while idle:
            link = idle.pop()
            closing = link.transport is None or link.transport.is_closing()
            if link.lost or closing or now - link.idle_since > IDLE_S:
                link.close()
                continue
            link._reset()
            self._busy.add(link)
            self.reused += 1
            return link, True
        scheme, host, port = server
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Link(self, server),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise ConnectFailed(
                f"cannot connect to {host}:{port}: no answer within {self.connect_timeout_s:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            why = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
            raise ConnectFailed(f"cannot connect to {host}:{port}: {why}") from None
        link = protocol
        self._busy.add(link)
        return link, False

    def give_back(self, link: _Link) -> None:
        self._busy.discard(link)
        if not link.reusable():
            link.close()
            return
        idle = self._idle.setdefault(link.server, [])
        if len(idle) >= MAX_IDLE_PER_SERVER:
            link.close()
            return
        link.idle_since = self._clock()
        idle.append(link)

    def forget(self, link: _Link) -> None:
        """A connection closed (by either side): out of the pool."""
        idle = self._idle.get(link.server)
        if idle is not None and link in idle:
            idle.remove(link)

    async def close(self) -> None:
        """Close every connection, idle or busy."""
        for links in self._idle.values():
            for link in links:
                link.close()
        self._idle.clear()
        for link in list(self._busy):
            link.close()
        self._busy.clear()
