"""Ollama: one long-lived server, many models, loaded and unloaded through its HTTP API.

helixd supervises ``ollama serve`` like any provider process (started with
``OLLAMA_KEEP_ALIVE=-1``, a high ``OLLAMA_MAX_LOADED_MODELS`` and ``OLLAMA_NUM_PARALLEL``
from its models' ``max_concurrency``, so Ollama's own scheduler never unloads or evicts),
and this adapter drives its models:

- load: ``POST /api/generate {"model", "keep_alive": -1}`` with no prompt, then the model
  must show in ``GET /api/ps``;
- unload: the same with ``"keep_alive": 0``, then wait until ``/api/ps`` no longer lists it;
- memory: ``size_vram`` (GPU) and ``size - size_vram`` (host RAM: partly on CPU) from
  ``/api/ps``, Ollama's own figures for the model;
- lost: the server process leaving ``ready``, or a model missing from ``/api/ps`` at the
  next check (every ``health.interval_s``), tells the scheduler.

Ollama places a model on the GPUs it sees itself; helixd cannot pin it to the device it
chose. Checked against Ollama's API as documented at ollama/ollama@fb30760 (docs/api.md,
server/routes.go; see shared/PROVIDERS.md) through the protocol fake
``tests/fakes/ollama_server.py``; not yet against a real ``ollama serve``, which cannot be
installed on the machine the tests run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp

from helixd.config import ModelConfig, ProviderConfig
from helixd.providers.base import LoadError, ModelAdapter, ModelTarget, says_out_of_memory
from helixd.providers.estimate import OVERHEAD_FIXED_BYTES, OVERHEAD_FRACTION
from helixd.supervisor.process import ManagedProcess, ProcessState

log = logging.getLogger("helixd.providers")

# How long an unloaded model may take to leave /api/ps (Ollama stops its runner).
UNLOAD_WAIT_S = 30.0
# A load that has not answered by then never will: Ollama's own stall timer
# (OLLAMA_LOAD_TIMEOUT) defaults to 5 minutes.
LOAD_TIMEOUT_S = 330.0
API_TIMEOUT_S = 10.0
_SERVING = frozenset({ProcessState.READY, ProcessState.UNHEALTHY})

ServerLookup = Callable[[], ManagedProcess | None]


def server_env(models: Iterable[ModelConfig]) -> dict[str, str]:
    """What ``ollama serve`` needs to know of helixd's models: their parallelism."""
    parallel = max((m.max_concurrency for m in models), default=1)
    return {"OLLAMA_NUM_PARALLEL": str(parallel)}


class OllamaAdapter(ModelAdapter):
    """The models of one supervised ``ollama serve``."""

    shape = "multi-model"
    native_dialect = "ollama"

    def __init__(self, provider: str, config: ProviderConfig, server: ServerLookup) -> None:
        super().__init__(provider)
        self.config = config
        self._server = server
        self._ids: dict[str, str] = {}  # loaded model → Ollama's name for it
        self._sizes: dict[str, tuple[int, int]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._watch: asyncio.Task[None] | None = None

    # -- the server ----------------------------------------------------------------------

    def _base(self) -> str | None:
        process = self._server()
        if process is None or process.state not in _SERVING:
            return None
        return f"http://{process.spec.host}:{process.spec.port}"

    async def _ready_base(self) -> str:
        """The server's URL once it is ready; :class:`LoadError` if it will not be."""
        process = self._server()
        if process is None:
            raise LoadError(f"provider {self.provider} is not running (removed by a reload?)")
        if process.state not in _SERVING:
            await process.wait_settled(process.spec.start_seconds + 5)
        base = self._base()
        if base is None:
            why = process.message or str(process.state)
            raise LoadError(
                f"provider {self.provider} is {process.state} ({why}); "
                f"see helixctl logs {self.provider}, start it with helixctl start {self.provider}"
            )
        return base

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # trust_env off: a proxy from the environment must never see local traffic.
            self._session = aiohttp.ClientSession(trust_env=False)
        return self._session

    async def _post(self, base: str, path: str, body: dict[str, Any], timeout: float) -> None:
        """POST JSON; :class:`LoadError` with Ollama's own words unless it answers 200."""
        try:
            async with self._http().post(
                base + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LoadError(
                f"{self.provider} did not answer {path}: {exc or type(exc).__name__}"
            ) from None
        if response.status == 404:
            name = body.get("model")
            raise LoadError(
                f"{self.provider} has no model {name!r}; pull it with: helixctl pull {name}"
            )
        if response.status != 200:
            message = _error_text(text)
            raise LoadError(
                f"{self.provider} refused to load {body.get('model')!r}: "
                f"HTTP {response.status}: {message}",
                out_of_memory=says_out_of_memory([message]),
                log_tail=[message],
            )
        return None

    async def loaded_models(self, base: str) -> dict[str, dict[str, Any]]:
        """``GET /api/ps``: Ollama's loaded models by name."""
        async with self._http().get(
            base + "/api/ps", timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_S)
        ) as response:
            response.raise_for_status()
            data = await response.json(content_type=None)
        models = data.get("models") if isinstance(data, dict) else None
        return {
            str(m.get("name") or m.get("model")): m for m in models or [] if isinstance(m, dict)
        }

    # -- the adapter interface -----------------------------------------------------------

    async def load(self, target: ModelTarget) -> None:
        """Ask Ollama to load the model for ever (helixd decides when it goes)."""
        base = await self._ready_base()
        # Booked before asking: a load that fails or is cancelled half way is then unloaded
        # by the scheduler's clean-up instead of staying in Ollama unseen.
        self._ids[target.name] = target.model_id
        await self._post(
            base, "/api/generate", {"model": target.model_id, "keep_alive": -1}, LOAD_TIMEOUT_S
        )
        try:
            shown = (await self.loaded_models(base)).get(target.model_id)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LoadError(f"{self.provider}: /api/ps failed after a load: {exc}") from None
        if shown is None:
            raise LoadError(
                f"{self.provider} answered the load of {target.model_id!r} but /api/ps "
                "does not list it"
            )
        self._sizes[target.name] = _sizes(shown)
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watch_loaded(), name=f"{self.provider}:ps")

    async def unload(self, model: str) -> None:
        """Ask Ollama to unload now; wait until /api/ps no longer lists it."""
        model_id = self._ids.pop(model, None)
        self._sizes.pop(model, None)
        base = self._base()
        if model_id is None or base is None:
            return  # not loaded by us, or the server is gone (and its models with it)
        with contextlib.suppress(LoadError):
            await self._post(
                base, "/api/generate", {"model": model_id, "keep_alive": 0}, API_TIMEOUT_S
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UNLOAD_WAIT_S
        while loop.time() < deadline:
            try:
                if model_id not in await self.loaded_models(base):
                    return
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return  # the server went away: nothing is loaded in it any more
            await asyncio.sleep(0.1)  # a poll interval; the loop re-checks /api/ps
        log.warning(
            "%s: %s still listed in /api/ps %g s after its unload",
            self.provider,
            model_id,
            UNLOAD_WAIT_S,
        )

    def upstream(self, model: str) -> str | None:
        """The server's URL while the model is loaded there."""
        return self._base() if model in self._ids else None

    def upstream_model(self, model: str) -> str:
        """Ollama's name of the model (its ``id``, e.g. ``qwen2.5-coder:7b``)."""
        return self._ids.get(model, model)

    async def size_hint(self, model_id: str) -> tuple[int, str] | None:
        """The model file's size from ``/api/tags``, plus the usual runtime overhead."""
        base = self._base()
        if base is None:
            return None
        try:
            async with self._http().get(
                base + "/api/tags", timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_S)
            ) as response:
                response.raise_for_status()
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        for card in data.get("models") or [] if isinstance(data, dict) else []:
            if isinstance(card, dict) and model_id in (card.get("name"), card.get("model")):
                size = int(card.get("size") or 0)
                if size > 0:
                    total = int(size * (1 + OVERHEAD_FRACTION)) + OVERHEAD_FIXED_BYTES
                    return total, f"Ollama's file size {size / 2**30:.1f} GiB + 5 % + 256 MiB"
        return None

    async def reported_memory(self, model: str) -> tuple[int, int] | None:
        """``(size_vram, size - size_vram)`` from /api/ps."""
        base = self._base()
        model_id = self._ids.get(model)
        if base is not None and model_id is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                shown = (await self.loaded_models(base)).get(model_id)
                if shown is not None:
                    self._sizes[model] = _sizes(shown)
        return self._sizes.get(model)

    def memory_note(self, model: str) -> str | None:
        """Says so when Ollama keeps part of the model in host RAM (CPU offload)."""
        vram, ram = self._sizes.get(model, (0, 0))
        if vram and ram:
            share = ram / (vram + ram)
            return f"partly on CPU: {share:.0%} of it in host RAM (Ollama's /api/ps)"
        return None

    def server_changed(self, process: ManagedProcess) -> None:
        """The server left ``ready``: every model it held is gone."""
        if process.state in _SERVING or not self._ids:
            return
        why = process.message or f"{self.provider} is {process.state}"
        for model in list(self._ids):
            self._ids.pop(model, None)
            self._sizes.pop(model, None)
            log.warning("%s: model %s lost: %s", self.provider, model, why)
            self._lost(model, why)

    async def close(self) -> None:
        """Unload every model we loaded; close the HTTP session."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for model in list(self._ids):
            await self.unload(model)
        if self._session is not None:
            await self._session.close()

    async def _watch_loaded(self) -> None:
        """Every health interval: a model missing from /api/ps has been lost."""
        while self._ids:
            await asyncio.sleep(self.config.health.interval_s)
            base = self._base()
            if base is None:
                continue  # the server's own state change reports the loss
            try:
                shown = await self.loaded_models(base)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            for model, model_id in list(self._ids.items()):
                if model_id not in shown:
                    self._ids.pop(model, None)
                    self._sizes.pop(model, None)
                    why = f"{self.provider} no longer lists it in /api/ps"
                    log.warning("%s: model %s lost: %s", self.provider, model, why)
                    self._lost(model, why)


def _sizes(shown: dict[str, Any]) -> tuple[int, int]:
    size = int(shown.get("size") or 0)
    vram = min(size, int(shown.get("size_vram") or 0))
    return vram, size - vram


def _error_text(text: str) -> str:
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return str(data["error"])
    return text.strip()[:300]
