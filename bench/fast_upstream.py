"""A model server that costs next to nothing: canned OpenAI answers on uvloop + httptools.

The endpoint benchmark's upstream, so that what is measured is the relay in front of it,
not the model server (helixd's own echo server, on aiohttp, spends ten times the CPU of
the relay it is meant to measure). ``POST`` to any path answers a chat completion in one
Content-Length body, or, when the request says ``"stream": true``, as five SSE chunks
(chunked) and ``[DONE]``; ``GET /health`` answers 200. Keep-alive, pipelining in order.

Run: ``python bench/fast_upstream.py --port PORT`` (helixd starts it as a model's server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from typing import cast

import httptools
import uvloop

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello there"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
).encode()
WHOLE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(ANSWER),
    ANSWER,
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    document = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + json.dumps(document).encode() + b"\n\n"


STREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(_chunk(_event(word)) for word in ("hello", " there", " from", " the"))
    + _chunk(_event(None, "stop"))
    + _chunk(b"data: [DONE]\n\n")
    + b"0\r\n\r\n"
)
HEALTH = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.parser.get_method() == b"GET":
            self.transport.write(HEALTH)
            return
        body = b"".join(self.body)
        streaming = b'"stream": true' in body or b'"stream":true' in body
        self.transport.write(STREAM if streaming else WHOLE)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(Server, host, port, reuse_address=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="m")  # helixd passes it; every name is served
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))
