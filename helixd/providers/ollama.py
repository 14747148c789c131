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

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from helixd.config import ModelConfig
from helixd.providers.base import LoadError, ModelTarget, says_out_of_memory
from helixd.providers.estimate import OVERHEAD_FIXED_BYTES, OVERHEAD_FRACTION
from helixd.providers.http import error_text
from helixd.providers.one_server import OneServerAdapter

log = logging.getLogger("helixd.providers")

# A load that has not answered by then never will: Ollama's own stall timer
# (OLLAMA_LOAD_TIMEOUT) defaults to 5 minutes.
LOAD_TIMEOUT_S = 330.0


def server_env(models: Iterable[ModelConfig]) -> dict[str, str]:
    """What ``ollama serve`` needs to know of helixd's models: their parallelism."""
    parallel = max((m.max_concurrency for m in models), default=1)
    return {"OLLAMA_NUM_PARALLEL": str(parallel)}


class OllamaAdapter(OneServerAdapter):
    """The models of one supervised ``ollama serve``."""

    native_dialect = "ollama"
    loaded_list = "/api/ps"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sizes: dict[str, tuple[int, int]] = {}

    async def _post(self, base: str, path: str, body: dict[str, Any], timeout: float) -> None:
        """POST JSON; :class:`LoadError` with Ollama's own words unless it answers 200."""
        status, text = await self.http.call("POST", base + path, body=body, timeout=timeout)
        if status == 404:
            name = body.get("model")
            raise LoadError(
                f"{self.provider} has no model {name!r}; pull it with: helixctl pull {name}"
            )
        if status != 200:
            message = error_text(text)
            raise LoadError(
                f"{self.provider} refused to load {body.get('model')!r}: HTTP {status}: {message}",
                out_of_memory=says_out_of_memory([message]),
                log_tail=[message],
            )

    async def loaded_models(self, base: str) -> dict[str, dict[str, Any]]:
        """``GET /api/ps``: Ollama's loaded models by name."""
        data = await self.http.get_json(base + "/api/ps")
        models = data.get("models") if isinstance(data, dict) else None
        return {
            str(m.get("name") or m.get("model")): m for m in models or [] if isinstance(m, dict)
        }

    async def loaded_ids(self, base: str) -> set[str]:
        """The names /api/ps lists."""
        return set(await self.loaded_models(base))

    # -- the adapter interface -----------------------------------------------------------

    async def _load_on(self, base: str, target: ModelTarget) -> None:
        """Ask Ollama to load the model for ever (helixd decides when it goes)."""
        await self._post(
            base, "/api/generate", {"model": target.model_id, "keep_alive": -1}, LOAD_TIMEOUT_S
        )
        try:
            shown = (await self.loaded_models(base)).get(target.model_id)
        except LoadError as exc:
            raise LoadError(f"{self.provider}: /api/ps failed after a load: {exc}") from None
        if shown is None:
            raise self._not_listed(target.model_id)
        self._sizes[target.name] = _sizes(shown)

    async def _unload_on(self, base: str, model_id: str) -> None:
        """An empty generate with ``keep_alive: 0`` (Ollama's own unload)."""
        with contextlib.suppress(LoadError):  # the wait that follows tells
            await self._post(base, "/api/generate", {"model": model_id, "keep_alive": 0}, 10.0)

    def _forget(self, model: str) -> None:
        super()._forget(model)
        self._sizes.pop(model, None)

    async def size_hint(self, model_id: str) -> tuple[int, str] | None:
        """The model file's size from ``/api/tags``, plus the usual runtime overhead."""
        base = self._base()
        if base is None:
            return None
        try:
            data = await self.http.get_json(base + "/api/tags")
        except LoadError:
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
            with contextlib.suppress(LoadError):
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


def _sizes(shown: dict[str, Any]) -> tuple[int, int]:
    size = int(shown.get("size") or 0)
    vram = min(size, int(shown.get("size_vram") or 0))
    return vram, size - vram
