"""Health probes: an HTTP GET that must answer 2xx, or a TCP connect.

The HTTP probe speaks just enough HTTP/1.1 over an asyncio stream to read a status
line; it needs no client session and cannot be confused by keep-alive or proxies
(the environment's ``HTTP_PROXY`` must never route a loopback health check).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from helixd.supervisor.spec import HealthProbe


@dataclass(frozen=True)
class ProbeResult:
    """Whether the probe passed, and a short reason when it did not."""

    ok: bool
    detail: str


async def probe(health: HealthProbe, host: str, port: int | None) -> ProbeResult:
    """Run ``health`` once against ``host:port`` within its timeout."""
    if health.kind == "none":
        return ProbeResult(True, "no probe")
    if port is None:
        return ProbeResult(False, "no port to probe")
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
        # that arrives as the probe completes, and a stop would then wait forever.
        async with asyncio.timeout(health.timeout_s):
            return await _probe(health, host, port)
    except TimeoutError:
        return ProbeResult(False, f"no answer within {health.timeout_s:g} s")
    except OSError as exc:
        return ProbeResult(False, exc.strerror or str(exc))
    except Exception as exc:
        # Whatever the other end sends (a 64 KiB status line, garbage), a probe only fails.
        return ProbeResult(False, f"unreadable answer: {exc!r:.120}")


async def _probe(health: HealthProbe, host: str, port: int) -> ProbeResult:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if health.kind == "tcp":
            return ProbeResult(True, "port accepts connections")
        request = (
            f"GET {health.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "User-Agent: helixd-health\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.decode(errors="replace").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return ProbeResult(False, f"not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        if 200 <= status < 300:
            return ProbeResult(True, f"HTTP {status}")
        return ProbeResult(False, f"GET {health.path} answered HTTP {status}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
