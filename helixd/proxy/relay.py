"""Forward one request to the upstream that serves its model, streaming the answer back.

Chunks go to the client as they arrive (``iter_any``: no buffering, no re-framing). A
failure before the first byte may be retried; after it, an event stream ends with a
well-formed error event and any other body simply ends — never a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from helixd.proxy.errors import sse_error

log = logging.getLogger("helixd.proxy")

# Hop-by-hop and framing headers are the proxy's own business, not the upstream's.
DROPPED_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "server", "date"}
)


class UpstreamUnreachable(Exception):
    """Nothing was received from the upstream: the request may go elsewhere."""


class UpstreamRejected(Exception):
    """The upstream answered with an error status, and nothing went to the client yet."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300].decode(errors='replace')}")
        self.status = status
        self.body = body


# Statuses worth another candidate: the server is failing, overloaded or timing out.
RETRYABLE = frozenset({429, 500, 502, 503, 504})


@dataclass
class RelayResult:
    """What happened, for the access log and metrics."""

    status: int
    first_byte_s: float | None
    failed_mid_stream: bool = False


async def relay(
    session: aiohttp.ClientSession,
    request: web.Request,
    url: str,
    payload: bytes,
    extra_headers: dict[str, str],
    started: float,
    clock: Callable[[], float],
    may_retry: bool = False,
) -> tuple[web.StreamResponse, RelayResult]:
    """POST ``payload`` to ``url`` and stream the answer to ``request``'s client.

    With ``may_retry``, an error status is raised as :class:`UpstreamRejected` instead of
    being relayed, so the caller can try elsewhere before the client sees anything.
    """
    try:
        upstream = await session.post(
            url, data=payload, headers={"Content-Type": "application/json"}
        )
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise UpstreamUnreachable(str(exc) or type(exc).__name__) from None
    async with upstream:
        if may_retry and upstream.status in RETRYABLE:
            raise UpstreamRejected(upstream.status, await upstream.read())
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in DROPPED_HEADERS}
        headers.update(extra_headers)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        event_stream = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        result = RelayResult(upstream.status, None)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                if result.first_byte_s is None:
                    result.first_byte_s = clock() - started
                await response.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            result.failed_mid_stream = True
            log.warning("upstream %s failed mid-answer: %s", url, exc or type(exc).__name__)
            if event_stream:
                message = f"the model's server failed mid-answer: {exc or type(exc).__name__}"
                await response.write(sse_error(message, "upstream_failed"))
        await response.write_eof()
        return response, result
