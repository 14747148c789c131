"""What helixd says about itself: the status document, the one-line summary, the live
view's inputs, and which process a provider's or model's name means.

Apart from the daemon, which builds the components and runs their start, stop and reload,
so that what ``status``, ``logs`` and the live view show changes here alone. It only
reads: the supervisor's processes, residency's views, the endpoint's and the jobs'
reports, and the config in force (a callable, so a reload is seen at once).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from helixd import __version__
from helixd.config import DaemonPaths, LoadedConfig, ProviderConfig
from helixd.jobs.alerts import AlertBook
from helixd.jobs.service import Operations
from helixd.proxy.server import ProxyServer
from helixd.scheduler import Residency
from helixd.supervisor.arbiter import Supervisor, UnknownProcess
from helixd.supervisor.process import ManagedProcess, ProcessState
from helixd.ui.document import LiveInputs


class Overview:
    """Read-only views of a running helixd, for the control API and the live view."""

    def __init__(
        self,
        config: Callable[[], LoadedConfig],
        paths: DaemonPaths,
        supervisor: Supervisor,
        residency: Residency,
        proxy: ProxyServer,
        ops: Operations,
        alerts: AlertBook,
        live_actions: Callable[[], bool],
    ) -> None:
        self._config = config
        self._paths = paths
        self._supervisor = supervisor
        self._residency = residency
        self._proxy = proxy
        self._ops = ops
        self._alerts = alerts
        self._live_actions = live_actions
        self.started_at = time.time()

    def summary(self) -> str:
        """The one-line STATUS= text (see :func:`summary_line`)."""
        return summary_line(
            self._config().config.providers,
            {name: str(p.state) for name, p in self._supervisor.processes.items()},
            self._residency.summary_counts(),
        )

    def status(self) -> dict[str, Any]:
        """The ``GET /v1/status`` document."""
        paths = self._paths
        return {
            "version": __version__,
            "pid": os.getpid(),
            "mode": paths.mode,
            "started_at": self.started_at,
            "uptime_s": time.time() - self.started_at,
            "config": str(self._config().path),
            "socket": str(paths.socket),
            "state_dir": str(paths.state_dir),
            "log_dir": str(paths.log_dir),
            "summary": self.summary(),
            "providers": [p.info() for p in self._supervisor.processes.values()],
            "models": self._residency.infos(),
            "devices": self._residency.devices(),
            "proxy": self._proxy.info(),
        } | self._ops.status()

    def live_inputs(self) -> LiveInputs:
        """The views the live document is built from (see :mod:`helixd.ui.document`)."""
        residency = self._residency
        return LiveInputs(
            version=__version__,
            host=socket.gethostname(),
            started_at=self.started_at,
            summary=self.summary(),
            models=residency.infos(),
            eviction_order=residency.eviction_order(),
            devices=residency.devices(),
            providers=self.provider_infos(),
            alerts=self._alerts.info()["active"],
            jobs=self._ops.jobs.info(),
            spend=self._proxy.spend.report(),
            actions=self._live_actions(),
            auth=bool(self._config().config.proxy.api_keys),
        )

    def provider_infos(self) -> list[dict[str, Any]]:
        """Every configured provider: a supervised server's process, else what it is."""
        processes = self._supervisor.processes
        infos = []
        for name, provider in self._config().config.providers.items():
            if name in processes:
                infos.append(processes[name].info())
                continue
            state = "remote" if provider.kind == "remote" else "per model"
            infos.append({"name": name, "kind": provider.kind, "state": state, "restarts": 0})
        return infos

    def provider_process(self, name: str) -> ManagedProcess:
        """Provider ``name``'s own process; a configured one without a process says why."""
        config = self._config().config
        provider = config.providers.get(name)
        if name in self._supervisor.processes or provider is None:
            return self._supervisor.get(name)
        if provider.kind == "remote":
            why = "a remote provider: helixd runs no process for it"
        else:
            models = sorted(m for m, c in config.models.items() if c.provider == name)
            why = (
                "a per-model provider: it has no process of its own, one per loaded model; "
                f"use helixctl load/unload MODEL ({', '.join(models) or 'no models'})"
            )
        raise UnknownProcess(f"{name!r} is {why}")

    def log_source(self, name: str) -> ManagedProcess:
        """A provider's process, else a model's (by model name or ``provider:model``)."""
        processes = self._supervisor.processes
        if name in processes:
            return processes[name]
        for model in self._residency.views():
            process = model.adapter.log_process(model.name)
            if process is not None and name in (model.name, process.spec.name):
                return process
        known = sorted(processes) + self._residency.names()
        raise UnknownProcess(
            f"no provider or model process named {name!r}; known: {', '.join(known) or 'none'}"
        )


def summary_line(
    providers: Mapping[str, ProviderConfig],
    process_states: Mapping[str, str],
    model_counts: Mapping[str, int],
) -> str:
    """``3 providers: 1 ready, 1 per model, 1 remote; models: 1 loaded``.

    Counts every configured provider, as ``config check`` does: a supervised server by its
    state, a per-model provider (no server of its own until a model loads) and a remote
    one by what they are. Counting only supervised processes said "1 provider" for a
    config of two.
    """
    counts: dict[str, int] = {}
    for name, provider in providers.items():
        if name in process_states:
            word = process_states[name]
        elif provider.kind == "remote":
            word = "remote"
        else:
            word = "per model"
        counts[word] = counts.get(word, 0) + 1
    parts = []
    if providers:
        order = [str(s) for s in ProcessState] + ["per model", "remote"]
        states = ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
        parts.append(f"{len(providers)} provider{'s' if len(providers) != 1 else ''}: {states}")
    if model_counts:
        states = ", ".join(f"{n} {s}" for s, n in sorted(model_counts.items()))
        parts.append(f"models: {states}")
    return "; ".join(parts) or "no providers configured"
