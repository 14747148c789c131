"""From config to residency: one adapter per provider, one entry per model, with sizes.

Sizes are worked out here (declared, remembered measurement, or an estimate from the
model's files), once per config load, in a thread: reading a GGUF header is quick but
it is still disk I/O.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping

from helixd.config import DaemonPaths, HelixConfig, ModelConfig, ProviderConfig
from helixd.providers.base import ModelAdapter
from helixd.providers.estimate import EstimateError, estimate_path
from helixd.providers.llama_router import LlamaRouterAdapter
from helixd.providers.localai import LocalAIAdapter
from helixd.providers.ollama import OllamaAdapter
from helixd.providers.one_server import OneServerAdapter
from helixd.providers.per_model import ProcessPerModelAdapter
from helixd.providers.remote import RemoteAdapter
from helixd.providers.tabby import TabbyAdapter
from helixd.providers.vllm import VllmAdapter
from helixd.scheduler.entry import ModelEntry
from helixd.scheduler.sizing import memory_figure, size_key
from helixd.state import ResidencyRecord
from helixd.supervisor.process import ManagedProcess
from helixd.supervisor.registry import ChildRegistry

log = logging.getLogger("helixd.scheduler")

# The configured models as residency will track them: built here, handed to
# :meth:`helixd.scheduler.Residency.adopt` or ``replace_config`` unopened.
Catalog = dict[str, ModelEntry]


def build_adapters(
    config: HelixConfig,
    paths: DaemonPaths,
    registry: ChildRegistry,
    servers: Callable[[str], ManagedProcess | None],
    previous: Mapping[str, ModelAdapter] | None = None,
) -> dict[str, ModelAdapter]:
    """An adapter per provider that has models; an unchanged provider keeps its adapter.

    ``servers(name)``: the supervised process of a one-server provider (Ollama), looked
    up on each use, since a reload may replace it.
    """
    adapters: dict[str, ModelAdapter] = {}
    used = {m.provider for m in config.models.values()}
    for name in sorted(used):
        provider = config.providers[name]
        old = (previous or {}).get(name)
        if isinstance(old, _CONFIGURED) and old.config == provider:
            adapters[name] = old
        elif provider.kind == "remote":
            adapters[name] = RemoteAdapter(name, provider)
        elif provider.is_model_template and provider.kind == "vllm":
            adapters[name] = VllmAdapter(name, provider, paths, registry)
        elif provider.is_model_template:
            adapters[name] = ProcessPerModelAdapter(name, provider, paths, registry)
        else:  # config refuses models on any other one-server provider
            one_server = _ONE_SERVER[provider.kind]
            adapters[name] = one_server(name, provider, functools.partial(servers, name))
        adapter = adapters[name]
        if isinstance(adapter, LlamaRouterAdapter):
            adapter.ensure_preset()  # llama-server will not start without it
    return adapters


_ONE_SERVER: dict[str, type[OneServerAdapter]] = {
    "ollama": OllamaAdapter,
    "llamacpp-router": LlamaRouterAdapter,
    "localai": LocalAIAdapter,
    "tabbyapi": TabbyAdapter,
}
_CONFIGURED = (ProcessPerModelAdapter, RemoteAdapter, OneServerAdapter)


def _estimate(model: ModelConfig) -> tuple[int | None, str]:
    if model.path is None:
        return None, "no path to estimate from"
    try:
        estimate = estimate_path(model.path, model.ctx)
    except EstimateError as exc:
        return None, f"no estimate: {exc}"
    except OSError as exc:
        return None, f"no estimate: {model.path}: {exc.strerror}"
    return estimate.total_bytes, estimate.detail


async def build_entries(
    config: HelixConfig,
    adapters: Mapping[str, ModelAdapter],
    record: ResidencyRecord,
    gpus_present: bool,
) -> Catalog:
    """One :class:`ModelEntry` per configured model, sized and pinned as config and state say."""
    estimates = await asyncio.to_thread(
        lambda: {name: _estimate(m) for name, m in config.models.items()}
    )
    entries: dict[str, ModelEntry] = {}
    for name, model in config.models.items():
        provider: ProviderConfig = config.providers[model.provider]
        on_gpu = gpus_present and model.gpu_layers != 0 and adapters[model.provider].holds_memory
        key = size_key(name, model.provider, provider, model, on_gpu)
        estimated, detail = estimates[name]
        figure = memory_figure(model, record.measured.get(key), estimated, detail, on_gpu)
        entries[name] = ModelEntry(
            name=name,
            config=model,
            adapter=adapters[model.provider],
            figure=figure,
            size_key=key,
            pinned_by_config=model.pinned,
            runtime_pin=record.pins.get(name),
        )
    return entries
