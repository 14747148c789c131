"""A bounded, seeded fuzz of the endpoint: malformed JSON of every shape, protocol junk,
smuggling attempts and compression lies. helixd must answer each with a 4xx (or close
the connection), never a 5xx or a traceback, and still serve a normal request after."""

from __future__ import annotations

import gzip
import json
import random
import socket
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from tests.e2e.test_proxy import echo_models, post

SEED = 20261206
CASES = 2000
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/chat", "/api/generate"]
GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}


def json_bodies(rng: random.Random) -> bytes:
    """Valid JSON of the wrong shape, or text that is almost JSON."""
    depth = rng.choice([1, 10, 1000, 5000])
    shapes: list[Callable[[], bytes]] = [
        lambda: b"[" * depth + b"]" * depth,
        lambda: b'{"model": ' + b"[" * depth + b"]" * depth + b"}",
        lambda: b'{"a":' * depth + b"1" + b"}" * depth,
        lambda: json.dumps(rng.choice([None, 1, "m", [], {}, True, 1.5e308])).encode(),
        lambda: json.dumps({"model": rng.choice([None, 1, [], {}, "", "m" * 5000])}).encode(),
        lambda: json.dumps({**GOOD, "messages": rng.choice([None, 1, "x", [1], [{}]])}).encode(),
        lambda: json.dumps({**GOOD, "stream": rng.choice([1, "yes", None, []])}).encode(),
        lambda: json.dumps(
            {**GOOD, "options": rng.choice([1, "x", [], {"temperature": "hot"}])}
        ).encode(),
        lambda: json.dumps(GOOD).encode()[: rng.randrange(1, 40)],
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))),
        lambda: b'{"model": "m", "x": "\\ud800"}',
        lambda: b'{"model": "m", "x": NaN, "y": Infinity}',
        lambda: json.dumps(GOOD).encode().replace(b'"', b"'"),
        lambda: b"\xef\xbb\xbf" + json.dumps(GOOD).encode(),
    ]
    return rng.choice(shapes)()


def request(rng: random.Random) -> bytes:
    """One HTTP request, malformed somewhere (or not at all, now and then)."""
    path = rng.choice(PATHS)
    body = json_bodies(rng)
    headers = {"Host": "x", "Content-Type": "application/json", "Connection": "close"}
    kind = rng.randrange(8)
    if kind == 0:  # a compression lie, or a real but unsupported one
        headers["Content-Encoding"] = rng.choice(["gzip", "deflate", "br", "zstd", "gzip, gzip"])
        if rng.random() < 0.5 and headers["Content-Encoding"] in ("gzip", "deflate"):
            body = (gzip.compress if headers["Content-Encoding"] == "gzip" else zlib.compress)(
                body
            )[: rng.choice([None, 5, 20])]
    head = f"POST {path} HTTP/1.1\r\n"
    if kind == 1:  # smuggling: both framings
        headers["Transfer-Encoding"] = "chunked"
        headers["Content-Length"] = str(len(body))
    elif kind == 2:  # a length that lies
        headers["Content-Length"] = str(max(0, len(body) + rng.choice([-3, -1, 7])))
    elif kind == 3:  # a bad length
        headers["Content-Length"] = rng.choice(["-1", "abc", "1e3", "99999999999999999999"])
    elif kind == 4:  # protocol junk in the request line or headers
        head = rng.choice(
            [f"POST {path} HTTP/9.9\r\n", f"P0ST {path} HTTP/1.1\r\n", "POST\r\n", "\r\n\r\n"]
        )
        headers["Content-Length"] = str(len(body))
    elif kind == 5:  # a header too big or malformed
        headers[rng.choice(["X-Big", "Bad Header", "X:Colon"])] = "v" * rng.choice([10, 10000])
        headers["Content-Length"] = str(len(body))
    else:
        headers["Content-Length"] = str(len(body))
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + lines + "\r\n").encode() + body


def answer_status(port: int, data: bytes) -> int | None:
    """The status helixd answers ``data`` with; None when it closes without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # a lying Content-Length must not hang the case
        except OSError:
            pass  # helixd may close on junk before reading it all
        got = b""
        try:
            while len(got) < 12 and (chunk := sock.recv(4096)):
                got += chunk
        except ConnectionResetError:
            return None
    if not got.startswith(b"HTTP/1."):
        return None
    return int(got[9:12])


def cases() -> Iterator[bytes]:
    rng = random.Random(SEED)
    for _ in range(CASES):
        yield request(rng)


def test_the_endpoint_survives_a_seeded_fuzz(helix: Any) -> None:
    h = helix(echo_models("m"))
    assert h.ctl("load", "m").returncode == 0
    failures = []
    for i, data in enumerate(cases()):
        status = answer_status(h.proxy_port, data)
        if status is not None and status >= 500:
            failures.append((i, status, data[:200]))
    assert failures == [], f"{len(failures)} of {CASES} answered 5xx; first: {failures[:3]}"
    stderr = h.stderr()
    assert "Traceback" not in stderr, stderr[-3000:]
    good = json.dumps(GOOD).encode()
    assert post(h, "/v1/chat/completions", good)[0] == 200
