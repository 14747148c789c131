"""Re-pulling Ollama models marked ``refresh = true`` and reporting what changed."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import aiohttp
import aiohttp.http_exceptions

from helixd.config import HelixConfig
from helixd.errors import JobError
from helixd.jobs.base import JobContext
from helixd.providers.http import error_text
from helixd.scheduler import ModelState
from helixd.supervisor.process import ProcessState

log = logging.getLogger("helixd.jobs.update")

# Ollama sends pull progress continually; this long without a line means it is stuck.
PULL_STALL_S = 300.0
API_TIMEOUT_S = 10.0


class RefreshError(JobError):
    """A re-pull that did not happen; the message has Ollama's own words."""

    code = "refresh_failed"


async def _tags_digest(session: aiohttp.ClientSession, base: str, model_id: str) -> str | None:
    """The digest ``/api/tags`` shows for ``model_id`` (None: not installed)."""
    timeout = aiohttp.ClientTimeout(total=API_TIMEOUT_S)
    async with session.get(base + "/api/tags", timeout=timeout) as response:
        text = await response.text()
        if response.status != 200:
            raise RefreshError(f"/api/tags: HTTP {response.status}: {error_text(text)}")
    try:
        cards = json.loads(text).get("models") or []
    except (ValueError, AttributeError):
        cards = None
    if not isinstance(cards, list):
        raise RefreshError(f"/api/tags: not Ollama's answer: {text[:200]!r}")
    # Ollama lists "qwen2.5" as "qwen2.5:latest".
    names = {model_id, model_id if ":" in model_id else f"{model_id}:latest"}
    for card in cards:
        if isinstance(card, dict) and names & {card.get("name"), card.get("model")}:
            return str(card.get("digest") or "") or None
    return None


async def _pull(session: aiohttp.ClientSession, base: str, model_id: str) -> None:
    """``POST /api/pull`` read to its end: an ``{"error"}`` line is a failed pull."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=API_TIMEOUT_S, sock_read=PULL_STALL_S)
    body = {"model": model_id, "stream": True}
    async with session.post(base + "/api/pull", json=body, timeout=timeout) as response:
        if response.status != 200:
            text = await response.text()
            raise RefreshError(f"HTTP {response.status}: {error_text(text)}")
        last: dict[str, Any] = {}
        async for raw in response.content:
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict):
                    last = line
                    if line.get("error"):
                        raise RefreshError(str(line["error"]))
    if last.get("status") != "success":
        raise RefreshError(f"the pull ended without success (last: {last or 'nothing'})")


def _short(digest: str | None) -> str:
    """``sha256:abcdef012345…`` for messages."""
    if not digest:
        return "none"
    return "sha256:" + digest.removeprefix("sha256:")[:12] + "…"


async def refresh_model(
    ctx: JobContext, session: aiohttp.ClientSession, name: str, base: str, model_id: str
) -> dict[str, Any]:
    """Re-pull one model; its details entry (``error`` set when it failed)."""
    try:
        before = await _tags_digest(session, base, model_id)
        await _pull(session, base, model_id)
        after = await _tags_digest(session, base, model_id)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"error": f"Ollama did not answer: {exc or type(exc).__name__}"}
    except (ValueError, aiohttp.http_exceptions.HttpProcessingError) as exc:
        # Not text, or a line past aiohttp's limit: not an answer Ollama gives.
        return {"error": f"Ollama's answer to pull {model_id} could not be read: {exc}"}
    except RefreshError as exc:
        return {"error": f"pull {model_id} failed: {exc}"}
    if after is None:
        return {"error": f"pulled {model_id}, but /api/tags does not list it"}
    changed = before != after
    message = f"new version ({_short(before)} → {_short(after)})" if changed else "unchanged"
    model = ctx.residency.find(name)
    if changed and model is not None and model.state in (ModelState.LOADED, ModelState.SLEEPING):
        # Reloading would cut requests off; the next load picks the new weights up.
        message += "; the loaded one serves the old weights until it reloads"
    return {"before": before, "after": after, "changed": changed, "message": message}


async def refresh_models(ctx: JobContext, config: HelixConfig) -> dict[str, dict[str, Any]]:
    """Re-pull every ``refresh = true`` model of a ready Ollama provider."""
    results: dict[str, dict[str, Any]] = {}
    wanted = [
        (name, model)
        for name, model in config.models.items()
        if model.refresh and config.providers[model.provider].kind == "ollama"
    ]
    if not wanted:
        return results
    async with aiohttp.ClientSession(trust_env=False) as session:
        for name, model in wanted:
            process = ctx.supervisor.processes.get(model.provider)
            state = process.state if process is not None else ProcessState.STOPPED
            if state == ProcessState.STOPPED:  # stopped on purpose: not a failure
                results[name] = {"skipped": True, "message": f"{model.provider} is stopped"}
            elif process is None or state != ProcessState.READY:
                results[name] = {"error": f"not refreshed: {model.provider} is {state}"}
            else:
                base = f"http://{process.spec.host}:{process.spec.port}"
                results[name] = await refresh_model(ctx, session, name, base, model.id or name)
            log.info("refresh %s: %s", name, results[name].get("error") or results[name]["message"])
    return results
