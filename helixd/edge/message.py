"""What a handler sees and answers: a :class:`Request`, and a :class:`Response` (whole) or
a :class:`StreamResponse` (written as it goes, chunked).

The surface is the small part of aiohttp's the endpoint's handlers use (``headers``,
``read()``, ``content.read(n)``, ``match_info``, ``json_response``, ``prepare`` /
``write`` / ``write_eof``), so a handler reads the same on either server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qsl

from multidict import CIMultiDict, CIMultiDictProxy

from helixd.errors import EndpointError

# Buffered request body past which the connection stops reading until the handler reads.
BODY_HIGH_WATER = 256 * 1024

REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class BodyTooLarge(EndpointError):
    """The request's body is larger than the endpoint accepts (``[proxy] max_body_mib``)."""

    code = "body_too_large"


class BodyTimeout(EndpointError):
    """The request's body did not all arrive within ``[proxy] read_timeout_s``."""

    code = "body_timeout"


class Channel(Protocol):
    """The connection a request came on, as its answer needs it."""

    gone: bool

    @property
    def closing(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Body:
    """A request's body as it arrives: fed by the connection, read by the handler.

    Bounded twice: past ``limit`` bytes in all the body is dropped and a read raises
    :class:`BodyTooLarge`; past :data:`BODY_HIGH_WATER` unread, the connection stops
    reading from the socket until the handler catches up.
    """

    __slots__ = (
        "_buffered",
        "_channel",
        "_chunks",
        "_deadline",
        "_expect_continue",
        "_timeout_s",
        "_waiter",
        "complete",
        "limit",
        "size",
        "too_large",
    )

    def __init__(
        self,
        channel: Channel,
        limit: int,
        expect_continue: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        self._channel = channel
        self._timeout_s = timeout_s
        self._deadline: float | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self.limit = limit
        self.size = 0
        self.complete = False
        self.too_large = False
        self._expect_continue = expect_continue

    # -- the connection's side ---------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.too_large:
            return
        if self.size > self.limit:
            self.refuse()
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > BODY_HIGH_WATER:
            self._channel.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def refuse(self) -> None:
        """Past the limit (or declared so): drop what is held; reads raise."""
        self.too_large = True
        self._chunks.clear()
        self._buffered = 0
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the handler's side ------------------------------------------------------------

    async def _wait(self) -> None:
        if self._expect_continue:
            # The client holds its body until told to go on (RFC 9110 §10.1.1).
            self._expect_continue = False
            self._channel.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._channel.gone:
            raise ConnectionResetError("the client closed its connection")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None
        if self._timeout_s is not None:
            # The whole body within the timeout, counted from the first wait for it.
            if self._deadline is None:
                self._deadline = loop.time() + self._timeout_s
            timer = loop.call_at(self._deadline, _late, waiter, self._timeout_s)
        self._channel.resume_reading()
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that has come, at least one) or, with ``n`` < 0, the
        whole body; ``b""`` at its end."""
        while True:
            if self.too_large:
                raise BodyTooLarge(f"request body over {self.limit} bytes")
            if self._chunks and (n >= 0 or self.complete):
                break
            if self.complete:
                return b""
            await self._wait()
        data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks.clear()
        if 0 <= n < len(data):
            self._chunks.append(data[n:])
            data = data[:n]
        self._buffered -= len(data)
        if self._buffered <= BODY_HIGH_WATER:
            self._channel.resume_reading()
        return data


def _late(waiter: asyncio.Future[None], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(BodyTimeout(f"request body not received within {timeout_s:g} s"))


class Request:
    """One request: its head, parsed, and its :class:`Body`."""

    __slots__ = (
        "_body",
        "_query",
        "answered",
        "channel",
        "content",
        "headers",
        "keep_alive",
        "match_info",
        "method",
        "path",
        "query_string",
        "remote",
        "version",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        version: str,
        headers: CIMultiDictProxy[str],
        content: Body,
        remote: str | None,
        keep_alive: bool,
        channel: Channel,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.version = version
        self.headers = headers
        self.content = content
        self.remote = remote
        self.keep_alive = keep_alive
        self.channel = channel
        self.match_info: dict[str, str] = {}
        self._query: dict[str, str] | None = None
        self._body: bytes | None = None
        self.answered = False  # a streamed answer has begun (its head is out)

    @property
    def query(self) -> Mapping[str, str]:
        """The query string's parameters (the first of each name)."""
        if self._query is None:
            self._query = {}
            for key, value in parse_qsl(self.query_string, keep_blank_values=True):
                self._query.setdefault(key, value)
        return self._query

    async def read(self) -> bytes:
        """The whole body (kept: a second read gives it again); :class:`BodyTooLarge`
        past the endpoint's limit."""
        if self._body is None:
            self._body = await self.content.read()
        return self._body


class _Clock:
    """The ``Date`` header, formatted once a second rather than once a response."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_clock = _Clock()


def _head(status: int, headers: CIMultiDict[str], extra: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    lines.append(b"Date: %s\r\nServer: helixd\r\n%s\r\n" % (_clock.date(), extra))
    return b"".join(lines)


def _headers(
    headers: Mapping[str, str] | None, content_type: str | None, charset: str | None
) -> CIMultiDict[str]:
    merged: CIMultiDict[str] = CIMultiDict(headers or {})
    if content_type is not None:
        merged["Content-Type"] = f"{content_type}; charset={charset}" if charset else content_type
    return merged


class Response:
    """An answer whose body is known whole: sent in one write, with its length."""

    __slots__ = ("body", "close", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes | None = None,
        text: str | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        charset: str | None = None,
    ) -> None:
        if text is not None:
            body = text.encode(charset or "utf-8")
            if content_type is None and "content-type" not in {k.lower() for k in headers or {}}:
                content_type, charset = "text/plain", charset or "utf-8"
        self.status = status
        self.headers = _headers(headers, content_type, charset)
        self.body = body or b""
        self.close = False

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def encode(self, keep_alive: bool, head_only: bool, http10: bool = False) -> bytes:
        """The bytes on the wire: status line, headers, and (but for HEAD) the body.
        ``http10``: an HTTP/1.0 client keeps its connection only when told so."""
        extra = b"Content-Length: %d\r\n" % len(self.body)
        if not keep_alive:
            extra += b"Connection: close\r\n"
        elif http10:
            extra += b"Connection: keep-alive\r\n"
        head = _head(self.status, self.headers, extra)
        return head if head_only else head + self.body


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``data`` as a JSON answer."""
    return Response(
        status=status,
        body=json.dumps(data).encode(),
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


class StreamResponse:
    """An answer written as it goes: the head at :meth:`prepare`, then chunks.

    Over HTTP/1.1 each write is a chunk of ``Transfer-Encoding: chunked``; an HTTP/1.0
    client gets the bytes bare and the connection closes at the end. A write to a client
    that has gone raises :class:`ConnectionResetError`.
    """

    def __init__(self, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self._channel: Channel | None = None
        self._chunked = True
        self._head_only = False
        self.prepared = False
        self.finished = False
        self.close = False

    async def prepare(self, request: Request) -> None:
        """Send the status line and headers."""
        if self.prepared:
            return
        self.prepared = True
        request.answered = True
        self._channel = request.channel
        self._head_only = request.method == "HEAD"
        self._chunked = request.version == "1.1"
        if self._chunked and request.keep_alive and not request.channel.closing:
            extra = b"Transfer-Encoding: chunked\r\n"
        else:
            self.close = True
            extra = (
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n"
                if self._chunked
                else (b"Connection: close\r\n")
            )
        await self._send(_head(self.status, self.headers, extra))

    async def write(self, data: bytes) -> None:
        """One piece of the body, on its way at once."""
        if not data or self._head_only:
            return
        if self._chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        await self._send(data)

    async def write_eof(self) -> None:
        """The end of the body."""
        if self.finished:
            return
        self.finished = True
        if self._chunked and not self._head_only:
            await self._send(b"0\r\n\r\n")

    async def _send(self, data: bytes) -> None:
        channel = self._channel
        if channel is None:
            raise RuntimeError("write before prepare")
        if channel.gone:
            raise ConnectionResetError("the client closed its connection")
        channel.write(data)
        await channel.drain()


# What a handler returns.
Answer = Response | StreamResponse
