"""vLLM: a process per model, sized by ``--gpu-memory-utilization``, with optional sleep.

vLLM takes a fixed share of the card (``--gpu-memory-utilization``, default 0.92) and
ignores everyone else on it, so helixd passes ``{gpu_memory_utilization}``: the model's
GPU figure over the card's total, rounded down to the hundredth (see
:func:`helixd.scheduler.views.model_target`); two vLLM models and an Ollama model then
share one card. vLLM only listens once its engine is up — "connection refused" while it
loads is normal and the start probe waits for ``/health`` until ``start_seconds``
(600 s by default for this kind: first starts compile and capture CUDA graphs).

Sleep mode (``sleep_mode = true`` on the model): the process starts with
``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1`` (the sleep routes exist only in
dev mode); "unload" is then ``POST /sleep?level=1`` — weights to host RAM, KV cache
dropped, GPU memory freed in seconds — and the next load ``POST /wake_up``; both are
confirmed with ``GET /is_sleeping``. The scheduler books a sleeping model in host RAM
(its process tree's RSS) with what little it keeps on the GPU. When host RAM is short
the model is stopped instead (a level-2 sleep would keep the process but still reload
the weights from disk on waking, which is most of a cold start's cost).

Checked against vLLM 0.33.0's documented API (``docs/features/sleep_mode.md``,
``vllm/entrypoints/openai/api_server.py``; see shared/PROVIDERS.md) through the protocol
fake ``tests/fakes/vllm_server.py``; not against a real ``vllm serve``, which needs a
CUDA GPU and a multi-gigabyte wheel the test machine cannot run.
"""

from __future__ import annotations

import logging
from typing import Any

from helixd.providers.base import LoadError, ModelTarget, says_out_of_memory
from helixd.providers.http import ProviderHttp, error_text
from helixd.providers.per_model import ProcessPerModelAdapter

log = logging.getLogger("helixd.providers")

# Moving a model's weights between GPU and host takes seconds per ten gigabytes.
SLEEP_TIMEOUT_S = 120.0
WAKE_TIMEOUT_S = 120.0


class VllmAdapter(ProcessPerModelAdapter):
    """vLLM models: one ``vllm serve`` each; asleep instead of stopped when allowed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = ProviderHttp(self.provider)
        self._sleep_mode: set[str] = set()  # started with --enable-sleep-mode
        self._asleep: set[str] = set()

    def launch_extras(self, target: ModelTarget) -> tuple[tuple[str, ...], dict[str, str]]:
        """Sleep mode needs the flag and vLLM's dev mode (which adds the sleep routes)."""
        if target.sleep_mode:
            return ("--enable-sleep-mode",), {"VLLM_SERVER_DEV_MODE": "1"}
        return (), {}

    async def load(self, target: ModelTarget) -> None:
        """Wake the model if it sleeps; start its process otherwise."""
        if target.name in self._asleep and self._address(target.name) is not None:
            await self._wake(target.name)
            return
        self._asleep.discard(target.name)
        if target.sleep_mode:
            self._sleep_mode.add(target.name)
        else:
            self._sleep_mode.discard(target.name)
        await super().load(target)

    def can_sleep(self, model: str) -> bool:
        """A sleep-mode model that is awake and serving."""
        return model in self._sleep_mode and model in self._serving

    def is_asleep(self, model: str) -> bool:
        """Asleep, and its process still there."""
        return model in self._asleep

    async def sleep(self, model: str) -> None:
        """``POST /sleep?level=1``, then ``/is_sleeping`` must say so."""
        base = self._address(model)
        if base is None or model not in self._serving:
            raise LoadError(f"{model} is not running; nothing to put to sleep")
        status, text = await self._http.call(
            "POST", base + "/sleep?level=1", timeout=SLEEP_TIMEOUT_S
        )
        if status != 200:
            raise LoadError(f"{model} did not fall asleep: HTTP {status}: {error_text(text)}")
        await self._expect_sleeping(model, base, True)
        self._serving.discard(model)
        self._asleep.add(model)
        log.info("%s: %s is asleep (weights in host RAM)", self.provider, model)

    async def _wake(self, model: str) -> None:
        base = self._address(model)
        assert base is not None
        status, text = await self._http.call("POST", base + "/wake_up", timeout=WAKE_TIMEOUT_S)
        if status != 200:
            message = error_text(text)
            raise LoadError(
                f"{model} did not wake up: HTTP {status}: {message}",
                out_of_memory=says_out_of_memory([message]),
                log_tail=[message],
            )
        await self._expect_sleeping(model, base, False)
        self._asleep.discard(model)
        self._serving.add(model)
        log.info("%s: %s is awake", self.provider, model)

    async def _expect_sleeping(self, model: str, base: str, expected: bool) -> None:
        data = await self._http.get_json(base + "/is_sleeping")
        if not isinstance(data, dict) or data.get("is_sleeping") is not expected:
            word = "asleep" if expected else "awake"
            raise LoadError(f"{model}: /is_sleeping answered {data!r}, expected it {word}")

    def _watched(self, model: str) -> bool:
        return model in self._serving or model in self._asleep

    def _process_lost(self, model: str) -> None:
        self._asleep.discard(model)

    async def unload(self, model: str) -> None:
        """Stop the model's process (awake or asleep)."""
        self._asleep.discard(model)
        await super().unload(model)

    async def close(self) -> None:
        """Stop every model process; close the HTTP session."""
        await super().close()
        await self._http.close()
