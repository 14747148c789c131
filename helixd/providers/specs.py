"""The processes the config asks helixd to supervise at provider level, as specs.

One :class:`~helixd.supervisor.spec.ProcessSpec` per provider that runs one server for
all its models (Ollama, LocalAI, TabbyAPI, a llama.cpp router, a ``command``); remote
providers and per-model templates run nothing here (their adapters start one process per
loaded model). What a kind needs beyond its config lives here, not in the daemon: today
Ollama's parallelism, worked out from its models' ``max_concurrency``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from helixd.config import DaemonPaths, HelixConfig, ProviderConfig
from helixd.providers.ollama import server_env as ollama_server_env
from helixd.supervisor.spec import ProcessSpec, build_spec

log = logging.getLogger("helixd")


def provider_specs(
    config: HelixConfig, paths: DaemonPaths, previous: Mapping[str, ProcessSpec] | None = None
) -> dict[str, ProcessSpec]:
    """Every provider-level process, by provider name; :class:`SpecError` if one is wrong.

    ``previous``: the specs running now (on reload), so that a provider with an ``auto``
    port keeps its port and an unchanged provider stays unchanged.
    """
    specs: dict[str, ProcessSpec] = {}
    for name, provider in config.providers.items():
        if provider.kind == "remote" or provider.is_model_template:
            continue  # nothing to supervise at provider level
        if (provider.user or provider.group) and os.geteuid() != 0:
            log.warning("providers.%s: user/group are ignored: helixd does not run as root", name)
        old = previous.get(name) if previous else None
        port = old.port if old is not None and provider.port == "auto" else None
        extra_env = _kind_env(name, provider, config)
        specs[name] = build_spec(name, provider, paths, port=port, extra_env=extra_env)
    return specs


def _kind_env(name: str, provider: ProviderConfig, config: HelixConfig) -> dict[str, str] | None:
    """What helixd works out for a kind's server; the provider's own ``env`` wins."""
    if provider.kind != "ollama":
        return None
    models = [m for m in config.models.values() if m.provider == name]
    return {k: v for k, v in ollama_server_env(models).items() if k not in provider.env}
