"""Health probes: an HTTP GET that must answer 2xx, or a TCP connect.

The HTTP probe speaks just enough HTTP/1.1 over an asyncio stream to read a status
line; it needs no client session and cannot be confused by keep-alive or proxies
(the environment's ``HTTP_PROXY`` must never route a loopback health check).

:class:`ProbeTally` keeps what the probes of one start answered, so a start that never
passes can say what was asked and what came back, with the fix that fits.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Literal

from helixd.supervisor.spec import HealthProbe

Outcome = Literal["ok", "http", "refused", "timeout", "error"]


@dataclass(frozen=True)
class ProbeResult:
    """Whether the probe passed, and a short reason when it did not."""

    ok: bool
    detail: str
    outcome: Outcome = "error"
    status: int | None = None  # the HTTP status, when an HTTP answer came back


async def probe(health: HealthProbe, host: str, port: int | None) -> ProbeResult:
    """Run ``health`` once against ``host:port`` within its timeout."""
    if health.kind == "none":
        return ProbeResult(True, "no probe", "ok")
    if port is None:
        return ProbeResult(False, "no port to probe")
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
        # that arrives as the probe completes, and a stop would then wait forever.
        async with asyncio.timeout(health.timeout_s):
            return await _probe(health, host, port)
    except TimeoutError:
        return ProbeResult(False, f"no answer within {health.timeout_s:g} s", "timeout")
    except ConnectionRefusedError:
        return ProbeResult(False, f"connection refused on {host}:{port}", "refused")
    except OSError as exc:
        return ProbeResult(False, exc.strerror or str(exc))
    except Exception as exc:
        # Whatever the other end sends (a 64 KiB status line, garbage), a probe only fails.
        return ProbeResult(False, f"unreadable answer: {exc!r:.120}")


async def _probe(health: HealthProbe, host: str, port: int) -> ProbeResult:
    path = health.path or "/"
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if health.kind == "tcp":
            return ProbeResult(True, "port accepts connections", "ok")
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
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
            return ProbeResult(True, f"HTTP {status}", "ok", status)
        return ProbeResult(False, f"GET {path} answered HTTP {status}", "http", status)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class ProbeTally:
    """What the probes of one start answered: how many, the latest answer, how long it held."""

    count: int = 0
    last: ProbeResult | None = None
    last_path: str | None = None
    streak: int = 0  # how many probes in a row, up to the latest, gave the latest answer
    before: str | None = None  # the answer before that streak began

    def add(self, result: ProbeResult, path: str | None) -> None:
        """Count one probe's result (``path``: what it asked for)."""
        self.count += 1
        if self.last is not None and self.last.detail == result.detail:
            self.streak += 1
        else:
            self.before = self.last.detail if self.last is not None else None
            self.streak = 1
        self.last = result
        self.last_path = path

    def summary(self, health: HealthProbe, port: int | None) -> str:
        """One line for a start that never passed: what came back, and the likely fix."""
        last = self.last
        if last is None:
            return "no probe ran before start_seconds passed"
        if self.streak == self.count:
            said = f"{last.detail} on every probe ({_probes(self.count)})"
        else:
            # Refused connections until a server listens are normal: the latest answer is
            # the one that tells what is wrong.
            said = (
                f"{last.detail} on the last {self.streak} of {_probes(self.count)} "
                f"(before that: {self.before})"
            )
        hint = probe_hint(last, self.last_path or health.path, port)
        return f"{said}: {hint}" if hint else said


def _probes(n: int) -> str:
    return f"{n} probe{'s' if n != 1 else ''}"


def probe_hint(result: ProbeResult, path: str | None, port: int | None) -> str:
    """The likely cause and fix of a failed probe, named by the config keys to change."""
    if result.outcome == "refused":
        return (
            f"is it listening on port {port}? Its command must use {{port}}; "
            "one that is only slow to start needs a larger start_seconds"
        )
    if result.outcome == "timeout":
        return "it took the connection but did not answer; if only slow, raise health.timeout_s"
    if result.outcome != "http":
        return ""
    if result.status == 404:
        if path != "/v1/models":
            return f'this server has no {path}; set health = {{ path = "/v1/models" }}'
        return "this server has no /v1/models; set health.path to one it answers with 2xx"
    if result.status == 503:
        return "it is still loading, or failing to; a larger start_seconds gives it longer"
    return f"health.path must answer 2xx once the server is ready (it is {path})"
