"""Forward one request to the upstream that serves its model, streaming the answer back.

Chunks go to the client as they arrive (no buffering, no re-framing). A
failure before the first byte may be retried; after it, an event stream ends with a
well-formed error event and any other body simply ends — never a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from helixd.edge.client import Answer as UpstreamAnswer
from helixd.edge.client import ClosedEarly, Pool, UpstreamIOError
from helixd.edge.message import Answer, Request, Response, StreamResponse
from helixd.errors import EndpointError
from helixd.proxy.errors import sse_error
from helixd.proxy.spend import UsageSniffer

log = logging.getLogger("helixd.proxy")

# Hop-by-hop and framing headers are the proxy's own business, not the upstream's.
DROPPED_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "server", "date"}
)


class UpstreamUnreachable(EndpointError):
    """Nothing was received from the upstream: the request may go elsewhere."""

    code = "upstream_unreachable"


class UpstreamRejected(EndpointError):
    """The upstream answered with an error status, and nothing went to the client yet."""

    code = "upstream_failed"

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300].decode(errors='replace')}")
        self.status = status
        self.body = body


# Answers up to this size that are not event streams are passed on in one piece.
WHOLE_BODY_BYTES = 1024 * 1024

# A pooled connection the upstream closed while it sat idle (uvicorn's 5 s keep-alive in
# vLLM and friends; llama-server after every stream) fails the next request before any
# answer. HTTP clients send such a request again only for idempotent methods, and ours
# are POSTs: sent again here, once, on the connection the pool gives next. A refused
# connect is not retried (nothing listens), nor anything after the status line.
STALE_CONNECTION_RETRIES = 1

# Statuses worth another candidate: the server is failing, overloaded or timing out.
RETRYABLE = frozenset({429, 500, 502, 503, 504})


# An upstream's error answer is read up to this much: enough for any message, and a
# broken server that streams junk with an error status cannot fill helixd's memory.
ERROR_BODY_BYTES = 64 * 1024


async def read_bounded(response: UpstreamAnswer, limit: int = ERROR_BODY_BYTES) -> bytes:
    """At most ``limit`` bytes of ``response``'s body; the rest is left unread."""
    return await response.read_bounded(limit)


@dataclass
class RelayResult:
    """What happened, for the access log and metrics."""

    status: int
    first_byte_s: float | None
    failed_mid_stream: bool = False
    usage: dict[str, Any] | None = None


async def open_upstream(
    pool: Pool,
    url: str,
    payload: bytes,
    upstream_headers: dict[str, str] | None,
    may_retry: bool,
) -> UpstreamAnswer:
    """POST to the upstream and read its status line and headers, nothing more.

    :class:`UpstreamUnreachable` when it gave no answer; with ``may_retry`` an error
    status is raised as :class:`UpstreamRejected` (with its body) so the caller can try
    elsewhere before the client sees anything.
    """
    for attempt in range(1 + STALE_CONNECTION_RETRIES):
        try:
            upstream, _ = await pool.post(url, payload, upstream_headers)
            break
        except ClosedEarly as exc:
            if attempt < STALE_CONNECTION_RETRIES:
                log.debug("%s: connection closed before an answer (%s); once more", url, exc)
                continue
            raise UpstreamUnreachable(str(exc)) from None
        except (UpstreamIOError, TimeoutError) as exc:  # nothing listens: no point again
            raise UpstreamUnreachable(str(exc) or "no answer within the timeout") from None
    if may_retry and upstream.status in RETRYABLE:
        async with upstream:
            raise UpstreamRejected(upstream.status, await read_bounded(upstream))
    return upstream


async def relay(
    pool: Pool,
    request: Request,
    url: str,
    payload: bytes,
    extra_headers: dict[str, str],
    started: float,
    clock: Callable[[], float],
    may_retry: bool = False,
    prepared: StreamResponse | None = None,
    upstream_headers: dict[str, str] | None = None,
    sniffer: UsageSniffer | None = None,
) -> tuple[Answer, RelayResult]:
    """POST ``payload`` to ``url`` and stream the answer to ``request``'s client.

    ``may_retry``: see :func:`open_upstream`. ``prepared``: an event stream already
    started (keep-alives while the model loaded); the answer continues it, and an error
    status becomes an error event.
    """
    upstream = await open_upstream(pool, url, payload, upstream_headers, may_retry)
    async with upstream:
        result = RelayResult(upstream.status, None)
        ndjson = upstream.headers.get("Content-Type", "").startswith("application/x-ndjson")
        if prepared is not None:
            response = prepared
            event_stream = True
            if upstream.status >= 400:
                body = (await read_bounded(upstream))[:500].decode(errors="replace")
                await response.write(sse_error(f"HTTP {upstream.status}: {body}", "upstream_error"))
                await response.write_eof()
                return response, result
        else:
            headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in DROPPED_HEADERS
            }
            headers.update(extra_headers)
            content_type = upstream.headers.get("Content-Type", "")
            event_stream = content_type.startswith("text/event-stream")
            length = upstream.content_length
            if not event_stream and length is not None and length <= WHOLE_BODY_BYTES:
                # A small answer of known length that is not a stream: pass it on whole,
                # in one write with its Content-Length (no chunked framing, no extra
                # syscalls); nothing is gained by trickling a complete JSON document.
                return await _whole(upstream, headers, result, started, clock, sniffer)
            response = StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
        try:
            async for chunk in upstream.chunks():
                if result.first_byte_s is None:
                    result.first_byte_s = clock() - started
                if sniffer is not None:
                    sniffer.feed(chunk)
                await response.write(chunk)
        except (UpstreamIOError, TimeoutError) as exc:
            result.failed_mid_stream = True
            message = f"the model's server failed mid-answer: {describe_cut(exc)}"
            log.warning("upstream %s: %s", url, message)
            if event_stream:
                await response.write(sse_error(message, "upstream_failed"))
            elif ndjson:  # Ollama's own stream: its in-band error line
                await response.write(json.dumps({"error": message}).encode() + b"\n")
        await response.write_eof()
        if sniffer is not None:
            result.usage = sniffer.usage()
        return response, result


async def _whole(
    upstream: UpstreamAnswer,
    headers: dict[str, str],
    result: RelayResult,
    started: float,
    clock: Callable[[], float],
    sniffer: UsageSniffer | None,
) -> tuple[Answer, RelayResult]:
    try:
        body = await upstream.read()
    except (UpstreamIOError, TimeoutError) as exc:
        # Nothing reached the client yet: the caller may try elsewhere.
        raise UpstreamUnreachable(f"answer cut short: {describe_cut(exc)}") from None
    result.first_byte_s = clock() - started
    if sniffer is not None:
        sniffer.feed(body)
        result.usage = sniffer.usage()
    response = Response(status=upstream.status, body=body, headers=headers)
    response.headers.setdefault("Content-Type", "application/json")  # the upstream's if any
    return response, result


def describe_cut(exc: BaseException) -> str:
    """What happened to an answer that stopped part way, in words."""
    if isinstance(exc, TimeoutError):
        return "no data arrived within the read timeout"
    if isinstance(exc, UpstreamIOError):
        return f"{exc} (did it crash?)"
    return f"connection lost ({type(exc).__name__})"


class EarlyStream:
    """Keep-alives for a streaming request that waits for its model to load.

    Only once the wait outlasts ``interval_s`` are the event-stream headers sent, and
    then an SSE comment every ``interval_s``: intermediaries with idle timeouts see a
    live connection. A request served quickly never starts one.
    """

    def __init__(self, request: Request, interval_s: float, headers: dict[str, str]) -> None:
        self.request = request
        self.interval_s = interval_s
        self.headers = headers
        self.response: StreamResponse | None = None
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self.response is None:
                response = StreamResponse(
                    status=200,
                    headers={
                        **self.headers,
                        "Content-Type": "text/event-stream",
                        "Cache-Control": "no-cache",
                    },
                )
                await response.prepare(self.request)
                self.response = response
            await self.response.write(b": waiting for the model to load\n\n")

    async def stop(self) -> StreamResponse | None:
        """Stop the keep-alives; the started response, if any, for the answer to continue."""
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the request itself is being cancelled (its client left)
        except ConnectionError:
            pass
        return self.response
