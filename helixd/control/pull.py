"""Serves :class:`helixd.protocol.PullModel`: download a model into an Ollama server.

Ollama's own NDJSON progress (``{status, digest, total, completed}``, an ``{"error"}``
line on failure) is streamed to the client as it comes; ``helixctl pull`` draws it.
"""

from __future__ import annotations

import json
import re

import aiohttp
from aiohttp import web

from helixd.control.routes import error
from helixd.supervisor.arbiter import Supervisor
from helixd.supervisor.process import ProcessState

# Ollama model names: [namespace/]name[:tag], maybe with a registry host in front.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}")
# A pull may sit silent while it verifies gigabytes; past this, Ollama is stuck.
READ_TIMEOUT_S = 600.0


async def pull(request: web.Request, supervisor: Supervisor) -> web.StreamResponse:
    """Stream Ollama's pull progress; an error status when the pull cannot start."""
    name = request.match_info["name"]
    model = request.query.get("model", "")
    if not _MODEL_NAME.fullmatch(model) or ".." in model:
        return error(
            400, "bad_request", f"model must be an Ollama model name like qwen2.5:7b; got {model!r}"
        )
    process = supervisor.get(name)
    if process.spec.kind != "ollama":
        return error(
            400,
            "cannot_pull",
            f"provider {name} is of kind {process.spec.kind}; only Ollama providers pull models",
        )
    if process.state not in (ProcessState.READY, ProcessState.UNHEALTHY):
        return error(
            503,
            "not_ready",
            f"provider {name} is {process.state}; start it first: helixctl start {name}",
        )
    url = f"http://{process.spec.host}:{process.spec.port}/api/pull"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=READ_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        try:
            upstream = await session.post(url, json={"model": model, "stream": True})
        except (aiohttp.ClientError, TimeoutError) as exc:
            return error(502, "upstream_failed", f"{name} did not answer: {exc}")
        async with upstream:
            if upstream.status != 200:
                text = (await upstream.text())[:300]
                return error(502, "upstream_failed", f"{name}: HTTP {upstream.status}: {text}")
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            try:
                async for line in upstream.content:
                    await response.write(line if line.endswith(b"\n") else line + b"\n")
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = f"{name} stopped answering mid-pull: {exc or type(exc).__name__}"
                await response.write(json.dumps({"error": why}).encode() + b"\n")
            await response.write_eof()
            return response
