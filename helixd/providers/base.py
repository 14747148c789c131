"""The adapter interface: how the scheduler loads, unloads and finds a provider's models.

Two shapes (DESIGN.md): a *process-per-model* provider starts one server process per
model (llama.cpp, vLLM, any OpenAI-compatible command); a *multi-model* provider is one
long-lived server that loads models through its HTTP API (Ollama, LocalAI, TabbyAPI).
Adapters do what they are told; they never decide what to evict.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from helixd.errors import ProviderError
from helixd.supervisor.process import ManagedProcess

# Words providers use when a load fails for lack of memory (CUDA, llama.cpp, vLLM, ROCm,
# our fake); the scheduler then evicts more and retries once.
_OUT_OF_MEMORY = re.compile(
    r"out of memory|CUDA_ERROR_OUT_OF_MEMORY|cudaMalloc failed|failed to allocate"
    r"|unable to allocate|OutOfMemoryError|No available memory for the cache blocks"
    r"|insufficient memory|hipErrorOutOfMemory"
    r"|less than desired GPU memory utilization",  # vLLM's start-up check
    re.IGNORECASE,
)


def says_out_of_memory(lines: Sequence[str]) -> bool:
    """True when a provider's last words say it ran out of (GPU) memory."""
    return any(_OUT_OF_MEMORY.search(line) for line in lines)


@dataclass(frozen=True)
class ModelTarget:
    """One model, as an adapter needs it to load it where the scheduler placed it."""

    name: str
    model_id: str
    path: Path | None
    ctx: int | None
    gpu_layers: int
    args: tuple[str, ...]
    gpu_index: int | None  # None: keep it off every GPU
    gpu_memory_utilization: float
    sleep_mode: bool = False


class LoadError(ProviderError):
    """A load that did not succeed; ``out_of_memory`` when the provider said so."""

    code = "load_failed"

    def __init__(
        self, message: str, *, out_of_memory: bool = False, log_tail: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory
        self.log_tail = list(log_tail)


LostCallback = Callable[[str, str], None]


class ModelAdapter(abc.ABC):
    """Loads and unloads the models of one provider."""

    shape: ClassVar[Literal["process-per-model", "multi-model"]]
    # False for remote providers: their models take no memory here.
    holds_memory: ClassVar[bool] = True
    # "ollama" when the upstream speaks Ollama's own API: Ollama requests then pass
    # through untouched instead of being translated to the OpenAI dialect.
    native_dialect: ClassVar[str | None] = None
    # True when the server holds one model at a time (TabbyAPI): loading another of its
    # models means the scheduler must first evict the one it holds.
    one_model_at_a_time: ClassVar[bool] = False

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._on_lost: LostCallback | None = None

    def on_lost(self, callback: LostCallback) -> None:
        """Call ``callback(model, why)`` when a loaded model goes away on its own."""
        self._on_lost = callback

    def _lost(self, model: str, why: str) -> None:
        if self._on_lost is not None:
            self._on_lost(model, why)

    @abc.abstractmethod
    async def load(self, target: ModelTarget) -> None:
        """Make ``target`` serve; raise :class:`LoadError` saying why not."""

    @abc.abstractmethod
    async def unload(self, model: str) -> None:
        """Release ``model`` and its memory; a model that is not loaded is a no-op."""

    @abc.abstractmethod
    def upstream(self, model: str) -> str | None:
        """Base URL (``http://127.0.0.1:PORT``) that serves ``model``; None if not loaded."""

    def upstream_model(self, model: str) -> str:
        """The name the upstream knows ``model`` by (requests are rewritten to it)."""
        return model

    def server_url(self) -> str | None:
        """A one-server provider's base URL while it serves, whether or not a given model
        is loaded there (to ask it about a model without loading it); None otherwise."""
        return None

    def upstream_headers(self, model: str) -> dict[str, str]:
        """Headers the upstream needs (an API key); none for local servers."""
        return {}

    def memory_pids(self, model: str) -> list[int]:
        """Processes whose trees hold exactly this model's memory (per-model processes)."""
        return []

    async def size_hint(self, model_id: str) -> tuple[int, str] | None:
        """Bytes the model will need, as the provider can tell before loading it, and how
        that was worked out; None when it cannot (the scheduler then knows no size)."""
        return None

    async def reported_memory(self, model: str) -> tuple[int, int] | None:
        """``(vram, ram)`` bytes as the provider itself reports them, if it does."""
        return None

    def can_sleep(self, model: str) -> bool:
        """True when ``model`` is awake and can be put to sleep instead of stopped."""
        return False

    def is_asleep(self, model: str) -> bool:
        """True while ``model`` sleeps (its process lives, its GPU memory is freed)."""
        return False

    async def sleep(self, model: str) -> None:
        """Free the model's GPU memory but keep its process (weights in host RAM); the
        next :meth:`load` wakes it. :class:`LoadError` when it did not fall asleep."""
        raise LoadError(f"{self.provider}: {model} has no sleep mode")

    def server_changed(self, process: ManagedProcess) -> None:
        """The provider's own supervised server changed state (one-server providers)."""
        return None  # process-per-model adapters watch their own processes

    def memory_note(self, model: str) -> str | None:
        """A word on where the provider put the model (e.g. partly on CPU), if it says."""
        return None

    def log_process(self, model: str) -> ManagedProcess | None:
        """The model's latest own process (kept after it ended: its log explains why)."""
        return None

    def process_info(self, model: str) -> dict[str, Any] | None:
        """The supervised process of ``model``, for status (per-model providers)."""
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Unload everything (helixd is stopping, or the provider left the config)."""
