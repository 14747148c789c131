"""One client connection: requests parsed by httptools, each handled in its own task, the
answers written back in order.

Modelled on uvicorn's ``protocols/http/httptools_impl.py``. What this adds to a parser:

- deadlines: a request's head must be complete within ``header_timeout_s`` of its first
  byte (a slowloris trickle is cut), and an idle keep-alive connection is closed after
  ``idle_timeout_s``; a body's own deadline is the handler's (``read_timeout_s``);
- bounds: at most ``max_headers`` header lines of at most ``max_header_bytes`` in all
  (431), a body within ``max_body_bytes`` (413, from the handler), reading paused while a
  body waits unread or a pipelined request waits its turn;
- protocol junk (a bad request line, conflicting ``Content-Length`` and
  ``Transfer-Encoding``: llhttp refuses those, so no request smuggling) gets a 400 with
  ``Connection: close``, counted and noted by the server, never a traceback;
- a client that goes away cancels its handler, which leaves the model's queue or frees
  its slot (aiohttp's ``handler_cancellation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from helixd.edge.message import Body, Request, Response, StreamResponse
from helixd.errors import EndpointError

if TYPE_CHECKING:
    from helixd.edge.server import EdgeServer

log = logging.getLogger("helixd.proxy")

# How long a closing connection drops what the client still sends before cutting it.
LINGER_S = 2.0
# Bytes a head may run past max_header_bytes before it is cut mid-line (the parser
# holds an unfinished line itself; the exact count is checked when the line ends).
HEAD_SLACK = 8 * 1024


class MalformedRequest(EndpointError):
    """Raised from a parser callback: answer ``status`` with ``code`` and close."""

    code = "malformed_request"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Connection(asyncio.Protocol):
    """A client's connection to the endpoint."""

    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.gone = False
        # The request being parsed, then those waiting their turn (pipelining).
        self._url: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._parsing: Request | None = None
        self._waiting: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        # The one deadline now running (head, idle or linger): a time on the loop's clock
        # and what to do then; the server's sweep fires it (a timer per request would
        # cost more than everything else the connection does).
        self.due = 0.0
        self._on_due: Callable[[], object] | None = None
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._closing = False  # no more requests: close once the current answer is out
        self._last_words = b""  # a refusal to send after the answer under way
        self._in_head = False  # between a request's first byte and its blank line
        self._head_fed = 0
        # Counted from now, not from connection_made: asyncio's loop makes a batch of
        # protocols per readiness event before any is connected, and the door's cap must
        # see them all. The head deadline also forgets one that is never connected.
        server.connections.add(self)
        self._deadline(self.limits.header_timeout_s, self._head_too_slow)

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # after a refusal or Connection: close, what comes is dropped
        try:
            self.parser.feed_data(data)
            if self._in_head:
                # httptools holds an unfinished header line itself and calls on_header
                # only once it ends: bound what it holds by what was fed since the head
                # began (an upper bound: the line that began it may hold more).
                self._head_fed += len(data)
                if self._head_fed > self.limits.max_header_bytes + HEAD_SLACK:
                    kib = self.limits.max_header_bytes // 1024
                    self._refuse(
                        431,
                        "headers_too_large",
                        f"request line and headers over {kib} KiB ([proxy] max_header_kib)",
                    )
        except httptools.HttpParserUpgrade:
            self._closing = True  # answered as plain HTTP; no protocol switch here
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__
            if isinstance(refusal, MalformedRequest):
                self._refuse(refusal.status, refusal.code, refusal.message)
            else:  # a bug of ours in a callback: no traceback to the client
                log.error("endpoint: parsing a request failed", exc_info=refusal)
                self._refuse(500, "internal_error", "the endpoint failed to read the request")
        except httptools.HttpParserError as exc:
            why = str(exc) or type(exc).__name__
            self._refuse(400, "malformed_request", f"malformed HTTP request: {why}")

    def eof_received(self) -> bool | None:
        # The client has closed its side: as nginx does, that is a client gone (its
        # handler is cancelled, 499), not a half-close to answer into. None: close.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.server.forget(self)
        self._deadline(None)
        if self._task is not None:
            self._task.cancel()
        for request in self._waiting:
            request.content.finish()
        self._waiting.clear()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- the channel handlers write to -------------------------------------------------

    @property
    def closing(self) -> bool:
        """No request after this one: its answer says ``Connection: close``."""
        return self._closing

    def write(self, data: bytes) -> None:
        if not self.gone and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self._writable is not None and not self._writable.done():
            # A client that takes nothing of its answer for idle_timeout_s is cut (as
            # nginx's send_timeout), so it cannot hold a model's slot for ever.
            timer = self.loop.call_later(self.limits.idle_timeout_s, self._send_too_slow)
            try:
                await self._writable
            finally:
                timer.cancel()
        if self.gone:
            raise ConnectionResetError("the client closed its connection")

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.gone:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        # A request waiting its turn keeps reading paused (its body is bounded so).
        if self._reading_paused and not self._waiting and self.transport is not None:
            self._reading_paused = False
            if not self.gone:
                self.transport.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._headers, self._header_bytes = [], [], 0
        self._in_head, self._head_fed = True, 0
        if self._task is None:
            self._deadline(self.limits.header_timeout_s, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        if len(self._headers) >= self.limits.max_headers:
            raise MalformedRequest(
                431,
                "headers_too_large",
                f"more than {self.limits.max_headers} header lines ([proxy] max_headers)",
            )
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            kib = self.limits.max_header_bytes // 1024
            raise MalformedRequest(
                431,
                "headers_too_large",
                f"request line and headers over {kib} KiB ([proxy] max_header_kib)",
            )

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        try:
            url = httptools.parse_url(b"".join(self._url))
        except httptools.HttpParserInvalidURLError:
            raise MalformedRequest(400, "malformed_request", "malformed request target") from None
        path = url.path.decode("latin-1") if url.path else "/"
        if "%" in path:
            path = unquote(path)
        query = url.query.decode("latin-1") if url.query else ""
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        method = parser.get_method().decode("ascii", "replace")
        version = parser.get_http_version()
        expect = version == "1.1" and headers.get("Expect", "").lower() == "100-continue"
        limits = self.limits
        body = Body(self, limits.max_body_bytes, expect, limits.body_timeout_s)
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > body.limit:
            body.refuse()  # answered 413 without reading it
        request = Request(
            method,
            path,
            query,
            version,
            headers,
            body,
            self.remote,
            parser.should_keep_alive(),
            self,
        )
        self._parsing = request
        if self._task is None:
            self._deadline(None)
            self._start(request)
        else:  # pipelined: answered in order, reading paused until its turn
            self._waiting.append(request)
            self.pause_reading()

    def on_body(self, chunk: bytes) -> None:
        if self._parsing is not None:
            self._parsing.content.feed(chunk)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.content.finish()
            self._parsing = None

    # -- answering ---------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        self._task = self.loop.create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        keep_alive = request.keep_alive
        try:
            response = await self.server.handle(request)
            if isinstance(response, StreamResponse):
                if not response.prepared:
                    await response.prepare(request)
                await response.write_eof()
                keep_alive = keep_alive and not response.close
            else:
                # A body left unread (refused too large, or never read) cannot be
                # skipped reliably: the connection closes after this answer.
                keep_alive = keep_alive and not response.close and request.content.complete
                keep_alive = keep_alive and not request.content.too_large and not self._closing
                head_only, http10 = request.method == "HEAD", request.version == "1.0"
                self.write(response.encode(keep_alive, head_only, http10))
                # A client that sends requests and reads no answers must not fill
                # helixd's memory: the next request waits until this one is taken.
                await self.drain()
        except asyncio.CancelledError:
            return  # the client went away, or a refusal took over: see _refuse
        except ConnectionError:
            keep_alive = False
        except Exception:
            log.exception("endpoint: %s %s failed", request.method, request.path)
            if request.answered:  # part of an answer went out: nothing sane to add
                self.abort()
                return
            keep_alive = False
            self.write(Response(500, text="internal error").encode(False, False))
        finally:
            self._task = None
        keep_alive = keep_alive and request.content.complete and not self._closing
        if not keep_alive:
            self._say_last_words(linger=not request.content.complete)
            return
        if self._waiting:
            self._start(self._waiting.popleft())
            self.resume_reading()
            return
        if self._in_head:  # the next head has begun: its deadline, not the idle one
            self._deadline(self.limits.header_timeout_s, self._head_too_slow)
        else:
            self._deadline(self.limits.idle_timeout_s, self._close)
        self.resume_reading()

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Protocol junk: answer once the answers before it are out, then close."""
        self._closing = True
        parsing, self._parsing = self._parsing, None
        self.server.refused(self, status, code, message)
        answer = self.server.error_response(status, message, code).encode(False, False)
        if self._task is None:
            self.write(answer)
            self._close(linger=True)
            return
        self._last_words = answer  # after the answer under way, which then closes
        if parsing is not None and not self._waiting:
            # The junk is in the body of the request being answered: it can never be
            # read whole, so its handler stops and the refusal is the answer (the task
            # may not have started yet, or may end by returning: the callback runs
            # either way, and the words are said once).
            self._task.add_done_callback(self._refused_instead)
            self._task.cancel()

    def _refused_instead(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if not self.gone:
            self._say_last_words(linger=True)

    def _say_last_words(self, linger: bool) -> None:
        """Close after the refusal waiting to be sent, if any (sent once)."""
        words, self._last_words = self._last_words, b""
        if words:
            self.write(words)
        self._close(linger=linger or bool(words))

    # -- timers and closing ------------------------------------------------------------

    def _deadline(self, seconds: float | None, then: Callable[[], object] | None = None) -> None:
        if seconds is None or then is None:
            self.due, self._on_due = 0.0, None
        else:
            self.due, self._on_due = self.loop.time() + seconds, then

    def expire(self) -> None:
        """The deadline has passed (called by the server's sweep)."""
        then, self.due, self._on_due = self._on_due, 0.0, None
        if then is not None:
            then()

    def _send_too_slow(self) -> None:
        self.server.stalled.count()
        self.abort()

    def _head_too_slow(self) -> None:
        if self.transport is None:  # never connected: nothing to cut, one less to count
            self.server.forget(self)
            return
        self.server.too_slow.count()
        self.transport.abort()

    def _close(self, linger: bool = False) -> None:
        """Close after what is written. ``linger``: the client may still be sending (a
        body left unread, junk after junk); closing on unread data would reset the
        connection and lose the answer, so end our side, drop what comes, and close
        when the client does or after :data:`LINGER_S` (nginx's lingering close)."""
        self._deadline(None)
        self._closing = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if linger and transport.can_write_eof():
            # Drop what still comes, even if reading was paused for a body left unread.
            self._reading_paused = False
            transport.resume_reading()
            try:
                transport.write_eof()
            except OSError:  # the client has already gone: nothing to linger for
                transport.abort()
                return
            self._deadline(LINGER_S, transport.abort)
            return
        transport.close()

    def shut(self) -> None:
        """helixd is stopping: close now if idle, else after the answer under way."""
        self._closing = True
        if self._task is None:
            self._close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self.transport is not None:
                self.transport.abort()
