"""LocalAI: one ``local-ai run`` server, many models, each in its own backend process.

helixd supervises the server (probed on ``/readyz``, which says 503 until LocalAI's
start-up is done) with LocalAI's own idle/busy watchdogs and its LRU limit off, so that
one scheduler decides for every provider, and drives its models:

- load: ``POST /backend/load {"model"}`` (blocks until the backend is up), then
  ``GET /system`` must list the model in ``loaded_models``;
- unload: ``POST /backend/shutdown {"model"}``, then wait until ``/system`` drops it;
- memory: LocalAI runs each model in a backend process of its own (a gRPC server it
  spawns); the processes that appeared under the server during the load are the
  model's, and the scheduler measures their trees (NVML per process, RSS) as it does a
  process-per-model provider's. ``GET /backend/monitor`` reports only a backend's host
  RSS, so it is the fallback when no new process was seen (a backend LocalAI reused);
- lost: the server leaving ``ready``, or a model missing from ``/system`` at the next
  check (every ``health.interval_s``).

The API key, if the server has ``--api-keys``, comes from the environment variable the
provider's ``api_key_env`` names (sent as Bearer, to LocalAI and in proxied requests).

Checked against LocalAI's API at mudler/LocalAI@82c191a (``core/http/routes/localai.go``,
``core/http/endpoints/localai/backend*.go``, ``core/cli/run.go``; see shared/PROVIDERS.md)
through the protocol fake ``tests/fakes/localai_server.py``; not against a real
``local-ai``, which cannot be installed on the machine the tests run on (no internet
beyond package indexes, and its backends are downloaded on first use).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import psutil

from helixd.providers.base import LoadError, ModelTarget
from helixd.providers.http import error_text
from helixd.providers.one_server import OneServerAdapter

# A backend may download and then load a model: far longer than an API call.
LOAD_TIMEOUT_S = 600.0


class LocalAIAdapter(OneServerAdapter):
    """The models of one supervised ``local-ai run``."""

    loaded_list = "/system"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pids: dict[str, list[int]] = {}

    def _auth(self) -> dict[str, str]:
        key = os.environ.get(self.config.api_key_env or "") if self.config.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def upstream_headers(self, model: str) -> dict[str, str]:
        """The API key, when the server wants one."""
        return self._auth()

    async def loaded_ids(self, base: str) -> set[str]:
        """``GET /system`` → ``loaded_models[].id``."""
        data = await self.http.get_json(base + "/system", headers=self._auth())
        loaded = data.get("loaded_models") if isinstance(data, dict) else None
        return {str(m.get("id")) for m in loaded or [] if isinstance(m, dict)}

    def _backend_pids(self) -> set[int]:
        pid = self._server_pid()
        if pid is None:
            return set()
        with contextlib.suppress(psutil.Error):
            return {child.pid for child in psutil.Process(pid).children(recursive=True)}
        return set()

    async def _load_on(self, base: str, target: ModelTarget) -> None:
        """``POST /backend/load``; the backend processes that appear are the model's."""
        before = self._backend_pids()
        status, text = await self.http.call(
            "POST",
            base + "/backend/load",
            body={"model": target.model_id},
            headers=self._auth(),
            timeout=LOAD_TIMEOUT_S,
        )
        message = error_text(text)
        if status in (401, 403):
            raise LoadError(
                f"{self.provider} refused helixd's API key (HTTP {status}); set "
                f"providers.{self.provider}.api_key_env to a variable holding one of its keys"
            )
        # "all backends returned error" also covers a backend that crashed: only these
        # say the model itself is unknown (LocalAI's words come along either way).
        unknown = ("could not find", "no model config or model file")
        if status == 404 or (status != 200 and any(u in message.lower() for u in unknown)):
            raise LoadError(
                f"{self.provider} has no model {target.model_id!r} ({message}); add its "
                f"config to LocalAI's models path or install it: local-ai models install "
                f"{target.model_id}"
            )
        if status != 200:
            raise self._load_failed(target.model_id, f"HTTP {status}: {message}")
        await self._confirm_loaded(base, target.model_id)
        owned = {p for pids in self._pids.values() for p in pids}
        self._pids[target.name] = sorted(self._backend_pids() - before - owned)

    async def _unload_on(self, base: str, model_id: str) -> None:
        """``POST /backend/shutdown`` (404 when it is not loaded: the wait then ends)."""
        with contextlib.suppress(LoadError):  # the wait that follows tells
            await self.http.call(
                "POST", base + "/backend/shutdown", body={"model": model_id}, headers=self._auth()
            )

    def _forget(self, model: str) -> None:
        super()._forget(model)
        self._pids.pop(model, None)

    def memory_pids(self, model: str) -> list[int]:
        """The backend processes that appeared with the model's load."""
        return list(self._pids.get(model, []))

    async def reported_memory(self, model: str) -> tuple[int, int] | None:
        """``/backend/monitor``'s RSS, only when no backend process of its own was seen."""
        base = self._base()
        model_id = self._ids.get(model)
        if self._pids.get(model) or base is None or model_id is None:
            return None
        try:
            data = await self.http.get_json(
                f"{base}/backend/monitor?model={model_id}", headers=self._auth()
            )
        except LoadError:
            return None
        memory = data.get("memory") if isinstance(data, dict) else None
        total = memory.get("total") if isinstance(memory, dict) else None
        return (0, int(total)) if isinstance(total, int | float) and total > 0 else None
