"""The health job: ask each loaded model for one token, and restart what does not answer.

A provider's own probe (``GET /`` or ``/health``) says its HTTP server is up; it does not
say that the model behind it can still generate: a wedged CUDA context, a dead runner
or a hung engine all answer the probe and fail every request. This job sends each
loaded model the smallest real request there is, on the same path requests take, and
never loads a model to do it (only models already loaded are asked).

A model that fails ``failures`` runs in a row gets an ``inference:<model>`` alert, and
(``recover = true``) its server is restarted: a one-server provider's process through
the supervisor, then the failed models loaded back; a per-model server by stopping and
starting that model. The alert resolves when the model answers again, or is unloaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from helixd.config.jobs import HealthJob
from helixd.jobs.base import JobContext, JobOutcome
from helixd.scheduler import ModelState, ModelStatus, ResidencyError
from helixd.supervisor.process import ProcessState

log = logging.getLogger("helixd.jobs.health")

# How long a restarted one-server provider has to become ready again.
RESTART_WAIT_S = 120.0


@dataclass(frozen=True)
class Answer:
    """What one model's one-token request came to."""

    model: str
    ok: bool
    detail: str
    seconds: float


class InferenceCheck:
    """The health job, with the count of consecutive failures per model between runs."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}

    async def __call__(self, ctx: JobContext, job: HealthJob) -> JobOutcome:
        models = _to_check(ctx, job)
        session = aiohttp.ClientSession(trust_env=False)
        try:
            answers = await asyncio.gather(
                *(ask(session, m, job.request_timeout_s) for m in models)
            )
        finally:
            await session.close()
        failed: list[Answer] = []
        for answer in answers:
            if answer.ok:
                self.failures.pop(answer.model, None)
                ctx.alerts.resolve(f"inference:{answer.model}", "it answers again")
            elif _still_serving(ctx, answer.model):
                self.failures[answer.model] = self.failures.get(answer.model, 0) + 1
                if self.failures[answer.model] >= job.failures:
                    failed.append(answer)
        self._forget_unloaded(ctx)
        recovered = await _recover(ctx, failed) if failed and job.recover else {}
        for answer in failed:
            what = recovered.get(answer.model, "not restarted (recover = false)")
            ctx.alerts.fire(
                f"inference:{answer.model}",
                "error",
                f"model {answer.model} does not answer a one-token request: {answer.detail}; "
                f"{what}",
                source="health",
            )
            self.failures.pop(answer.model, None)
        return _outcome(answers, failed, recovered)

    def _forget_unloaded(self, ctx: JobContext) -> None:
        models = {m.name: m for m in ctx.residency.views()}
        gone = [name for name in self.failures if name not in models]
        resting = [m.name for m in models.values() if m.state in _NOT_SERVING]
        for name in gone + resting:
            self.failures.pop(name, None)
            ctx.alerts.resolve(f"inference:{name}", "it is no longer loaded")


_NOT_SERVING = (ModelState.UNLOADED, ModelState.SLEEPING)


def _to_check(ctx: JobContext, job: HealthJob) -> list[ModelStatus]:
    return [
        model
        for model in ctx.residency.views()
        if model.loaded
        and model.adapter.holds_memory  # a remote's health is its owner's business
        and (not job.models or model.name in job.models)
        and model.adapter.upstream(model.name) is not None
    ]


def _still_serving(ctx: JobContext, model: str) -> bool:
    """A model unloaded or evicted during its check did not fail it."""
    now = ctx.residency.find(model)
    return now is not None and now.loaded


async def ask(session: aiohttp.ClientSession, model: ModelStatus, timeout: float) -> Answer:
    """Send ``model`` one generation of one token on its own server."""
    adapter, name = model.adapter, model.name
    base = adapter.upstream(name)
    upstream_model = adapter.upstream_model(name)
    if adapter.native_dialect == "ollama":
        url = f"{base}/api/generate"
        body: dict[str, Any] = {
            "model": upstream_model,
            "prompt": "ping",
            "stream": False,
            "options": {"num_predict": 1},
        }
    else:  # /v1/completions needs no chat template, which base models lack
        url = f"{base}/v1/completions"
        body = {"model": upstream_model, "prompt": "ping", "max_tokens": 1, "stream": False}
    began = time.monotonic()
    try:
        async with session.post(
            url,
            json=body,
            headers=adapter.upstream_headers(name),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            text = await response.text()
    except TimeoutError:
        return Answer(name, False, f"no answer in {timeout:g} s", timeout)
    except aiohttp.ClientError as exc:
        return Answer(name, False, f"{type(exc).__name__}: {exc}", time.monotonic() - began)
    seconds = time.monotonic() - began
    # A 4xx is the server answering (e.g. an embedding model refusing to generate); a
    # 404 means the model is gone from a server that should hold it.
    if response.status >= 500 or response.status == 404:
        return Answer(name, False, f"HTTP {response.status}: {_error_text(text)}", seconds)
    return Answer(name, True, f"HTTP {response.status}", seconds)


def _error_text(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:200] or "(empty answer)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error or text)[:200]


async def _recover(ctx: JobContext, failed: list[Answer]) -> dict[str, str]:
    """Restart the failed models' servers; what was done, per model."""
    done: dict[str, str] = {}
    by_server: dict[str, list[str]] = {}
    for answer in failed:
        model = ctx.residency.find(answer.model)
        if model is None:  # a reload took it out of the config meanwhile
            done[answer.model] = "not restarted: no longer configured"
            continue
        server = model.provider if model.adapter.shape == "multi-model" else None
        if server is not None and server in ctx.supervisor.processes:
            by_server.setdefault(server, []).append(answer.model)
        else:
            done[answer.model] = await _recycle(ctx, answer.model)
    for server, models in by_server.items():
        result = await _restart_server(ctx, server, models)
        done.update(dict.fromkeys(models, result))
    return done


async def _recycle(ctx: JobContext, model: str) -> str:
    try:
        await ctx.residency.recycle(model, "restarted: it did not answer the health check")
    except ResidencyError as exc:
        return f"restarting it failed: {exc}"
    return "restarted it"


async def _restart_server(ctx: JobContext, server: str, models: list[str]) -> str:
    process = ctx.supervisor.processes[server]
    log.warning("restarting %s: %s did not answer the health check", server, ", ".join(models))
    async with ctx.supervisor.lock:
        await process.restart()
    state = await process.wait_settled(RESTART_WAIT_S)
    if state != ProcessState.READY:
        return f"restarted {server}, which is {state}: {process.message or 'see its log'}"
    reloaded = []
    for model in models:
        try:
            await ctx.residency.load(model)
            reloaded.append(model)
        except ResidencyError as exc:
            return f"restarted {server}; loading {model} again failed: {exc}"
    return f"restarted {server} and loaded {', '.join(reloaded)} again"


def _outcome(answers: list[Answer], failed: list[Answer], recovered: dict[str, str]) -> JobOutcome:
    details = {
        "models": {
            a.model: {"ok": a.ok, "detail": a.detail, "seconds": round(a.seconds, 3)}
            | ({"recovery": recovered[a.model]} if a.model in recovered else {})
            for a in answers
        }
    }
    if not answers:
        return JobOutcome(True, "no model loaded: nothing to ask", details)
    if failed:
        parts = [
            f"{a.model} did not answer ({a.detail}); {recovered.get(a.model, '')}".rstrip("; ")
            for a in failed
        ]
        return JobOutcome(False, "; ".join(parts), details)
    slow = ", ".join(f"{a.model} {a.seconds * 1000:.0f} ms" for a in answers if a.ok)
    bad = [a for a in answers if not a.ok]
    note = f"; {len(bad)} failed once (retried next run)" if bad else ""
    return JobOutcome(
        not bad, f"{len(answers) - len(bad)} model(s) answered: {slow}{note}", details
    )
