"""The floor the endpoint's rewrite aims at: a relay on uvloop + httptools, nothing else.

An asyncio protocol per client connection parses requests with httptools and sends each
body to the upstream over a pooled keep-alive connection (also parsed with httptools),
passing the answer back as it arrives: Content-Length answers whole, chunked ones chunk
by chunk. No routing, no logging, no metrics. Run by ``proxy_overhead.py`` as its own
process, so its CPU time can be counted: ``python bench/bare_httptools_relay.py URL``
prints its URL once it listens.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import cast
from urllib.parse import urlsplit

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream; one request at a time."""

    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)

    def send(self, client: Client, head: bytes, body: bytes) -> None:
        self.client, self.headers, self.chunked = client, [], False
        assert self.transport is not None
        self.transport.write(head + body)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.headers.append((b"Content-Type", value))
        elif name.lower() == b"transfer-encoding":
            self.chunked = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        assert self.client is not None
        lines = [b"HTTP/1.1 %d OK\r\n" % status]
        lines += [b"%s: %s\r\n" % header for header in self.headers]
        self.client.head = b"".join(lines)
        self.client.parts = []

    def on_body(self, body: bytes) -> None:
        assert self.client is not None
        if self.chunked:
            self.client.stream(body)
        else:
            self.client.parts.append(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        self.pool.append(self)
        assert client is not None
        client.finish(self.chunked)


class Client(asyncio.Protocol):
    """One client connection: requests in, answers relayed back in order."""

    def __init__(self, upstream: tuple[str, int], pool: list[Upstream]) -> None:
        self.upstream = upstream
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.head = b""
        self.parts: list[bytes] = []
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        head = (
            b"POST %s HTTP/1.1\r\nHost: upstream\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (self.url, len(body))
        )
        asyncio.get_running_loop().create_task(self.forward(head, body))

    async def forward(self, head: bytes, body: bytes) -> None:
        if self.pool:
            upstream = self.pool.pop()
        else:
            loop = asyncio.get_running_loop()
            _, upstream = await loop.create_connection(lambda: Upstream(self.pool), *self.upstream)
        self.streaming = False
        upstream.send(self, head, body)

    def stream(self, chunk: bytes) -> None:
        assert self.transport is not None
        if not self.streaming:
            self.streaming = True
            self.transport.write(self.head + b"Transfer-Encoding: chunked\r\n\r\n")
        self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    def finish(self, chunked: bool) -> None:
        assert self.transport is not None
        if chunked:
            if not self.streaming:
                self.transport.write(self.head + b"Transfer-Encoding: chunked\r\n\r\n")
            self.transport.write(b"0\r\n\r\n")
            return
        body = b"".join(self.parts)
        self.transport.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def serve(upstream_url: str) -> None:
    parts = urlsplit(upstream_url)
    upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
    pool: list[Upstream] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream, pool), "127.0.0.1", 0)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1]))
