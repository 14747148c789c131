"""The endpoint's HTTP/1.1 (helixd.edge) against raw sockets, on uvloop and on asyncio's
own loop: keep-alive, pipelining, HTTP/1.0, 100-continue, chunked streams, HEAD, the
bounds and deadlines, smuggling attempts, a client gone, a graceful stop.

Each scenario is a coroutine run to completion on a fresh loop of each kind; waits are on
events or on the server's answers, never on sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from helixd.edge.message import (
    Answer,
    BodyTimeout,
    BodyTooLarge,
    Request,
    Response,
    StreamResponse,
    json_response,
)
from helixd.edge.routes import Routes
from helixd.edge.server import EdgeServer, Limits
from helixd.proxy.errors import openai_error

LOOPS = ["uvloop", "asyncio"]


def run(loop: str, scenario: Coroutine[Any, Any, None]) -> None:
    if loop == "uvloop":
        uvloop.run(asyncio.wait_for(scenario, 10))
    else:
        asyncio.run(asyncio.wait_for(scenario, 10))


class Harness:
    """An EdgeServer on loopback serving ``routes``; what it refused, in order."""

    def __init__(self, routes: Routes, **limits: Any) -> None:
        self.routes = routes
        self.refused: list[tuple[int, str]] = []
        self.server = EdgeServer(
            self.handle,
            Limits(**limits),
            openai_error,
            lambda status, code: self.refused.append((status, code)),
        )

    async def handle(self, request: Request) -> Answer:
        found = self.routes.find(request.method, request.path)
        if found is None:
            return openai_error(404, "no such endpoint", "unknown_endpoint")
        request.match_info = found.info
        try:
            return await found.handler(request)
        except BodyTooLarge:
            return openai_error(413, "too large", "body_too_large")
        except BodyTimeout:
            return openai_error(408, "too slow", "request_timeout")

    async def __aenter__(self) -> Harness:
        await self.server.start("127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.server.stop()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.server.port)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer: status, headers (lower-case names), body (by length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if status == 100:
        return status, headers, b""
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, headers, body
            body += chunk[:-2]
    return status, headers, await reader.read()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def echo(request: Request) -> Answer:
    body = await request.read()
    return json_response({"path": request.path, "length": len(body), "query": dict(request.query)})


def routes_with(**handlers: Callable[[Request], Awaitable[Answer]]) -> Routes:
    routes = Routes()
    routes.add_post("/echo", echo)
    routes.add_get("/echo", echo)
    for name, handler in handlers.items():
        routes.add_route("POST", f"/{name}", handler)
        routes.add_route("GET", f"/{name}", handler)
    return routes


@pytest.mark.parametrize("loop", LOOPS)
def test_keep_alive_serves_many_requests_on_one_connection(loop: str) -> None:
    async def scenario() -> None:
        async with Harness(routes_with()) as h:
            reader, writer = await h.connect()
            for n in range(3):
                writer.write(post("/echo", b"x" * n))
                status, headers, body = await read_answer(reader)
                assert status == 200 and b'"length": %d' % n in body
                assert headers["content-type"] == "application/json; charset=utf-8"
                assert "connection" not in headers
            writer.close()

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_requests_are_answered_in_order(loop: str) -> None:
    async def scenario() -> None:
        gate = asyncio.Event()

        async def slow(request: Request) -> Answer:
            await gate.wait()
            return Response(text="slow")

        async with Harness(routes_with(slow=slow)) as h:
            reader, writer = await h.connect()
            writer.write(post("/slow", b"") + post("/echo", b"abc") + post("/echo", b"de"))
            await writer.drain()
            # The two quick ones are parsed while the slow one waits, yet answered after it.
            gate.set()
            assert (await read_answer(reader))[2] == b"slow"
            assert b'"length": 3' in (await read_answer(reader))[2]
            assert b'"length": 2' in (await read_answer(reader))[2]
            writer.close()

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_http_1_0_gets_its_answer_and_the_connection_closes(loop: str) -> None:
    async def stream(request: Request) -> Answer:
        response = StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        await response.write(b"data: 2\n\n")
        return response

    async def scenario() -> None:
        async with Harness(routes_with(stream=stream)) as h:
            reader, writer = await h.connect()
            writer.write(b"GET /stream HTTP/1.0\r\n\r\n")
            answer = await reader.read()  # to the close
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head
            assert body == b"data: 1\n\ndata: 2\n\n"
            reader, writer = await h.connect()
            writer.write(b"GET /echo HTTP/1.0\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 200")
            # An HTTP/1.0 client that asks to keep its connection is told it may.
            reader, writer = await h.connect()
            for _ in range(2):
                writer.write(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                status, headers, _ = await read_answer(reader)
                assert status == 200 and headers["connection"] == "keep-alive"
            writer.close()

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stream_goes_out_chunk_by_chunk_and_head_gets_no_body(loop: str) -> None:
    async def scenario() -> None:
        sent = asyncio.Event()
        more = asyncio.Event()

        async def stream(request: Request) -> Answer:
            response = StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: first\n\n")
            sent.set()
            await more.wait()
            await response.write(b"data: second\n\n")
            return response

        async with Harness(routes_with(stream=stream)) as h:
            reader, writer = await h.connect()
            writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            # The first chunk arrives while the handler still waits: nothing is buffered.
            first = b"d\r\ndata: first\n\n\r\n"
            assert await reader.readexactly(len(first)) == first
            more.set()
            assert await reader.readuntil(b"0\r\n\r\n") == b"e\r\ndata: second\n\n\r\n0\r\n\r\n"
            writer.write(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head
            writer.write(post("/echo", b"after head"))  # nothing of a body came in between
            assert b'"length": 10' in (await read_answer(reader))[2]
            writer.close()

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_expect_100_continue_is_answered_before_the_body_is_read(loop: str) -> None:
    async def scenario() -> None:
        async with Harness(routes_with()) as h:
            reader, writer = await h.connect()
            writer.write(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 5\r\n\r\n"
            )
            status, _, _ = await read_answer(reader)
            assert status == 100
            writer.write(b"hello")
            status, _, body = await read_answer(reader)
            assert status == 200 and b'"length": 5' in body
            writer.close()

    run(loop, scenario())


SMUGGLING = [
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /echo HTTP/1.1\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nBad Header\r\n\r\n",
]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("junk", SMUGGLING, ids=range(len(SMUGGLING)))
def test_protocol_junk_and_smuggling_get_a_400_and_the_connection_closes(
    loop: str, junk: bytes
) -> None:
    async def scenario() -> None:
        async with Harness(routes_with()) as h:
            reader, writer = await h.connect()
            writer.write(junk)
            answer = await reader.read()  # to the close: nothing else is served
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
            assert answer.count(b"HTTP/1.1") == 1
            assert b"Connection: close" in answer and b'"malformed_request"' in answer
            assert h.refused == [(400, "malformed_request")]

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_head_past_its_bounds_is_a_431(loop: str) -> None:
    async def scenario() -> None:
        async with Harness(routes_with(), max_headers=5, max_header_bytes=1024) as h:
            reader, writer = await h.connect()
            many = "".join(f"X-{n}: y\r\n" for n in range(6))
            writer.write(f"GET /echo HTTP/1.1\r\n{many}\r\n".encode())
            answer = await reader.read()
            assert answer.startswith(b"HTTP/1.1 431") and b"max_headers" in answer
            reader, writer = await h.connect()
            writer.write(b"GET /echo HTTP/1.1\r\nX-Big: " + b"y" * 2000 + b"\r\n\r\n")
            answer = await reader.read()
            assert answer.startswith(b"HTTP/1.1 431") and b"max_header_kib" in answer
            assert h.refused == [(431, "headers_too_large")] * 2

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_body_too_large_is_refused_unread_and_the_answer_still_arrives(loop: str) -> None:
    async def scenario() -> None:
        async with Harness(routes_with(), max_body_bytes=1000) as h:
            reader, writer = await h.connect()
            # Declared too large: refused at once, without waiting for the body.
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
            writer.write(b"x" * 3000)  # part of it, still coming: the close must not reset
            status, headers, _ = await read_answer(reader)
            assert status == 413 and headers["connection"] == "close"
            assert await reader.read() == b""
            # Chunked, with no length to go by: refused once past the limit.
            reader, writer = await h.connect()
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"400\r\n" + b"y" * 1024 + b"\r\n")
            status, _, _ = await read_answer(reader)
            assert status == 413

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_closes_its_side_mid_body_is_gone_not_waited_for(loop: str) -> None:
    async def scenario() -> None:
        async with Harness(routes_with()) as h:
            reader, writer = await h.connect()
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            writer.write_eof()
            assert await reader.read() == b""  # closed at once, no answer (nginx's 499)

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_goes_away_cancels_its_handler(loop: str) -> None:
    async def scenario() -> None:
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def forever(request: Request) -> Answer:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("unreachable")

        async with Harness(routes_with(forever=forever)) as h:
            _, writer = await h.connect()
            writer.write(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
            await started.wait()
            writer.close()
            await cancelled.wait()

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_slow_head_is_cut_and_an_idle_connection_closed(loop: str) -> None:
    async def scenario() -> None:
        async with Harness(routes_with(), header_timeout_s=0.2, idle_timeout_s=0.3) as h:
            reader, writer = await h.connect()
            writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # never the blank line
            try:
                cut = await reader.read()
            except ConnectionResetError:
                cut = b""
            assert cut == b""  # reset, never answered
            assert h.server.too_slow.total == 1
            reader, writer = await h.connect()
            writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_answer(reader))[0] == 200
            assert await reader.read() == b""  # closed once idle past idle_timeout_s

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stop_lets_the_answer_under_way_finish(loop: str) -> None:
    async def scenario() -> None:
        started, finish = asyncio.Event(), asyncio.Event()

        async def slow(request: Request) -> Answer:
            started.set()
            await finish.wait()
            return Response(text="done")

        h = Harness(routes_with(slow=slow))
        await h.server.start("127.0.0.1", 0)
        idle_reader, _ = await h.connect()
        reader, writer = await h.connect()
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await started.wait()
        stopping = asyncio.ensure_future(h.server.stop())
        assert await idle_reader.read() == b""  # the idle one closes at once
        finish.set()
        status, headers, body = await read_answer(reader)
        assert (status, body, headers["connection"]) == (200, b"done", "close")
        await stopping

    run(loop, scenario())


def test_routes_match_exact_paths_and_variable_tails() -> None:
    routes = routes_with()
    routes.add_get("/v1/models/{name:.+}", echo)
    routes.add_get("/ui/static/{file}", echo)
    routes.add_get("/ui/{tail:.*}", echo)
    found = routes.find("GET", "/v1/models/org/model:7b")
    assert found is not None and found.info == {"name": "org/model:7b"}
    assert routes.find("GET", "/v1/models/") is None
    nested = routes.find("GET", "/ui/static/a/b")  # {file} is one segment: the tail's
    assert nested is not None and nested.info == {"tail": "static/a/b"}
    ui = routes.find("HEAD", "/ui/")
    assert ui is not None and ui.info == {"tail": ""}
    assert routes.find("DELETE", "/echo") is None and routes.allows_other_methods("/echo")
    assert not routes.allows_other_methods("/nowhere")
    with pytest.raises(ValueError, match="unsupported route pattern"):
        routes.add_get("/x/{a:[0-9]+}", echo)


# -- what a review found (each confirmed by a script before its fix) ------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_junk_in_a_body_the_handler_is_reading_is_refused_and_closed(loop: str) -> None:
    async def scenario() -> None:
        reading = asyncio.Event()

        async def slurp(request: Request) -> Answer:
            reading.set()
            return Response(text=str(len(await request.read())))

        async with Harness(routes_with(slurp=slurp)) as h:
            reader, writer = await h.connect()
            writer.write(b"POST /slurp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await reading.wait()  # the handler waits for the rest of the body
            writer.write(b"zz\r\nabc\r\n")  # not a chunk size
            answer = await reader.read()  # to the close
            assert answer.startswith(b"HTTP/1.1 400") and b"malformed_request" in answer
            assert h.refused == [(400, "malformed_request")]  # and our side is closed

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_reads_no_answers_cannot_fill_helixds_memory(loop: str) -> None:
    async def scenario() -> None:
        buffered: list[int] = []
        big = b"x" * 100_000

        async def large(request: Request) -> Answer:
            transport = next(iter(h.server.connections)).transport
            assert transport is not None
            buffered.append(transport.get_write_buffer_size())
            return Response(body=big)

        async with Harness(routes_with(large=large)) as h:
            reader, writer = await h.connect()
            writer.write(b"GET /large HTTP/1.1\r\n\r\n" * 300)  # and read nothing yet
            for _ in range(300):  # now all of them: every one is answered, in order
                status, _, body = await read_answer(reader)
                assert status == 200 and len(body) == len(big)
            assert len(buffered) == 300
            # Each request waited for the answer before it to leave the buffer; without
            # that, the last one would find about 30 MB queued.
            assert max(buffered) < 1_000_000, max(buffered)

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_header_line_that_never_ends_is_refused_at_the_bound(loop: str) -> None:
    async def scenario() -> None:
        async with Harness(routes_with(), max_header_bytes=4096) as h:
            reader, writer = await h.connect()
            writer.write(b"GET /echo HTTP/1.1\r\nX-Long: ")
            for _ in range(64):  # 1 MiB, and never the end of the line
                writer.write(b"a" * 16384)
            answer = await reader.read()
            assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
            assert h.refused == [(431, "headers_too_large")]

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_large_upload_left_unread_still_gets_its_answer(loop: str) -> None:
    async def scenario() -> None:
        async def refuse(request: Request) -> Answer:
            await asyncio.sleep(0)  # answers without reading the body
            return openai_error(401, "no key", "invalid_api_key")

        async with Harness(routes_with(refuse=refuse)) as h:
            reader, writer = await h.connect()
            size = 8 * 1024 * 1024
            writer.write(f"POST /refuse HTTP/1.1\r\nContent-Length: {size}\r\n\r\n".encode())

            async def upload() -> None:
                for _ in range(size // 65536):
                    writer.write(b"y" * 65536)
                    await writer.drain()  # fails if helixd stopped reading for good

            sending = asyncio.ensure_future(upload())
            status, headers, _ = await read_answer(reader)
            await sending  # the whole upload went: the server drained it, not reset it
            assert (status, headers["connection"]) == (401, "close")

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_body_that_stops_coming_times_out_at_the_edge(loop: str) -> None:
    async def scenario() -> None:
        async with Harness(routes_with(), body_timeout_s=0.2) as h:
            reader, writer = await h.connect()
            writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            status, headers, _ = await read_answer(reader)
            assert (status, headers["connection"]) == (408, "close")

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_handler_failing_mid_stream_cuts_the_connection_not_the_framing(loop: str) -> None:
    async def scenario() -> None:
        async def broken(request: Request) -> Answer:
            response = StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: 1\n\n")
            raise RuntimeError("a bug")

        async with Harness(routes_with(broken=broken)) as h:
            reader, writer = await h.connect()
            writer.write(b"GET /broken HTTP/1.1\r\n\r\n")
            try:
                answer = await reader.read()
            except ConnectionResetError:
                answer = b""
            assert b"internal error" not in answer and b"HTTP/1.1 500" not in answer

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_stops_reading_a_stream_is_cut_after_the_idle_timeout(loop: str) -> None:
    async def scenario() -> None:
        cut = asyncio.Event()

        async def flood(request: Request) -> Answer:
            response = StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            try:
                while True:  # far more than any socket buffer holds
                    await response.write(b"data: " + b"x" * 65536 + b"\n\n")
            except (ConnectionError, asyncio.CancelledError):  # cut: the client is gone
                cut.set()
                raise

        async with Harness(routes_with(flood=flood), idle_timeout_s=0.3) as h:
            _, writer = await h.connect()
            writer.write(b"GET /flood HTTP/1.1\r\n\r\n")  # then reads nothing
            await cut.wait()
            assert h.server.stalled.total == 1

    run(loop, scenario())
