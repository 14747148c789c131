"""A pooled upstream connection closed while idle: the request goes once more, on a new one.

A real socket server on loopback that answers with keep-alive and then drops the next
request on that connection unanswered, as an upstream does when its keep-alive timer
fires as the request arrives (uvicorn's 5 s) or when it closes after every stream while
promising keep-alive (llama-server).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from helixd.edge.client import Pool
from helixd.proxy.relay import (
    ERROR_BODY_BYTES,
    UpstreamRejected,
    UpstreamUnreachable,
    open_upstream,
)
from helixd.supervisor.spec import free_port

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Upstream:
    """Counts connections and requests; ``answers(n_on_connection)`` says whether to reply."""

    def __init__(self, answers: Callable[[int], bool]) -> None:
        self.answers = answers
        self.connections = 0
        self.requests = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                n += 1
                if not self.answers(n):
                    return  # closed unanswered
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    upstreams = Pool()
    yield upstreams
    await upstreams.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Upstream], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(upstream: Upstream) -> str:
        port = free_port()
        servers.append(await asyncio.start_server(upstream.serve, "127.0.0.1", port))
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_request_on_a_connection_closed_while_idle_is_sent_again(
    serve: Callable[[Upstream], Awaitable[str]], pool: Pool
) -> None:
    upstream = Upstream(answers=lambda n: n == 1)  # each connection answers once only
    url = await serve(upstream)
    for _ in range(3):
        async with await open_upstream(pool, url, b"{}", None, may_retry=False) as answer:
            assert answer.status == 200
            assert await answer.read() == b"{}"
    # the 2nd and 3rd requests each went to a pooled connection that dropped them
    assert (upstream.connections, upstream.requests) == (3, 5)


async def test_an_upstream_that_drops_every_request_is_tried_twice_then_unreachable(
    serve: Callable[[Upstream], Awaitable[str]], pool: Pool
) -> None:
    upstream = Upstream(answers=lambda n: False)
    url = await serve(upstream)
    with pytest.raises(UpstreamUnreachable, match="disconnected"):
        await open_upstream(pool, url, b"{}", None, may_retry=False)
    assert upstream.requests == 2


async def test_a_refused_connection_is_not_tried_again(pool: Pool) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/chat/completions"
    with pytest.raises(UpstreamUnreachable, match="onnect"):
        await open_upstream(pool, url, b"{}", None, may_retry=False)


async def test_an_error_answer_is_read_only_up_to_its_cap(pool: Pool) -> None:
    """A server that sends a huge body with an error status cannot fill helixd's memory."""
    huge = 4 * ERROR_BODY_BYTES

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 500 Oops\r\nContent-Length: {huge}\r\n\r\n".encode())
        writer.write(b"x" * huge)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    try:
        with pytest.raises(UpstreamRejected) as caught:
            await open_upstream(pool, f"http://127.0.0.1:{port}/", b"{}", None, True)
    finally:
        server.close()
        await server.wait_closed()
    assert caught.value.status == 500
    assert caught.value.body == b"x" * ERROR_BODY_BYTES


async def test_an_answer_read_in_part_does_not_go_back_to_the_pool(pool: Pool) -> None:
    """A bounded read stops short of a long error answer: that connection still holds
    the rest (and its reading may be paused), so the next request gets a new one."""
    requests = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                requests += 1
                if requests == 1:
                    chunk = b"%x\r\n%s\r\n" % (1000, b"e" * 1000)
                    writer.write(
                        b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + chunk * 400
                        + b"0\r\n\r\n"
                    )
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    port = free_port()
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        with pytest.raises(UpstreamRejected) as caught:
            await open_upstream(pool, url, b"{}", None, True)
        assert len(caught.value.body) == ERROR_BODY_BYTES  # read in part
        answer_two, pooled = await pool.post(url, b"{}")
        async with answer_two:
            assert (answer_two.status, await answer_two.read(), pooled) == (200, b"ok", False)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_header_with_a_line_break_is_refused_in_words_not_sent(pool: Pool) -> None:
    """A provider key read from a file with its newline must not split the request."""
    url = f"http://127.0.0.1:{free_port()}/v1/chat/completions"
    with pytest.raises(UpstreamUnreachable, match="Authorization header holds a line break"):
        await open_upstream(pool, url, b"{}", {"Authorization": "Bearer sk-1\n"}, False)
