"""The live document: what the page and ``helixctl top`` show, built from plain views.

Pure: the daemon gathers the views (model and provider documents, devices, alerts, jobs,
spend, recent requests) and :func:`live_document` shapes them. Every field is copied by
name from a whitelist, never passed through whole, so a secret that a view may carry (a
provider's command line with a key in it, its environment, an upstream's headers) can
never reach a browser, however the views grow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MODEL_FIELDS = (
    "name",
    "provider",
    "state",
    "state_since",
    "device",
    "vram_bytes",
    "ram_bytes",
    "memory_source",
    "pinned",
    "keep_alive_s",
    "expires_at",
    "last_used",
    "in_flight",
    "queued",
    "max_concurrency",
    "message",
)
PROVIDER_FIELDS = ("name", "kind", "state", "pid", "restarts", "since", "uptime_s", "message")
EXIT_FIELDS = ("code", "signal", "description")
JOB_FIELDS = ("name", "kind", "schedule", "enabled", "running", "next_run")
RUN_FIELDS = ("result", "message", "started", "duration_s", "trigger")
# Models keep memory on a device while in these states: they are in its bar.
HOLDING = frozenset({"loading", "loaded", "unloading", "sleeping"})


@dataclass(frozen=True)
class LiveInputs:
    """What the daemon hands :func:`live_document`: views, never the objects behind them."""

    version: str
    host: str
    started_at: float
    summary: str
    models: Sequence[Mapping[str, Any]]
    eviction_order: Sequence[str]
    devices: Mapping[str, Any]
    providers: Sequence[Mapping[str, Any]]
    alerts: Sequence[Mapping[str, Any]]
    jobs: Sequence[Mapping[str, Any]]
    spend: Mapping[str, Mapping[str, Any]]
    actions: bool
    auth: bool


def live_document(
    inputs: LiveInputs,
    requests: Sequence[Mapping[str, Any]],
    rates: Mapping[str, float],
    now: float,
) -> dict[str, Any]:
    """The document at ``now``; ``rates``: requests per minute by model."""
    rank = {name: i for i, name in enumerate(inputs.eviction_order, start=1)}
    models = [
        _pick(m, MODEL_FIELDS)
        | {
            "evict_rank": rank.get(str(m.get("name"))),
            "requests_per_min": rates.get(m["name"], 0.0),
        }
        for m in inputs.models
    ]
    return {
        "version": inputs.version,
        "host": inputs.host,
        "time": now,
        "started_at": inputs.started_at,
        "summary": inputs.summary,
        "ui": {"actions": inputs.actions, "auth": inputs.auth},
        "devices": devices(inputs.devices, inputs.models),
        "models": models,
        "providers": [_provider(p) for p in inputs.providers],
        "requests": [dict(r) for r in requests],
        "alerts": [_alert(a) for a in inputs.alerts],
        "jobs": [_job(j) for j in inputs.jobs],
        "spend": {
            name: {"today_usd": s.get("spent_today"), "budget_usd": s.get("budget")}
            for name, s in inputs.spend.items()
        },
    }


def devices(status: Mapping[str, Any], models: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Each GPU's and the host RAM's used and total memory, split by the models holding it.

    ``other_bytes`` is what is used but not by helixd's models (other processes, the
    driver, the OS), so the bar shows who holds the card, not just how full it is.
    """
    holding: dict[str, list[dict[str, Any]]] = {}
    for m in models:
        device = m.get("device")
        if m.get("state") not in HOLDING or not device:
            continue
        size = m.get("vram_bytes") if device != "ram" else m.get("ram_bytes")
        holding.setdefault(str(device), []).append({"name": m["name"], "bytes": int(size or 0)})
    gpus = []
    for g in status.get("gpus") or ():
        gpus.append(
            _bar(holding.get(str(g["id"]), []), int(g["total_bytes"]), int(g["used_bytes"]))
            | {"id": g["id"], "name": g.get("name")}
        )
    ram = status.get("ram")
    ram_bar = None
    if ram:
        total = int(ram["total_bytes"])
        ram_bar = _bar(holding.get("ram", []), total, total - int(ram["available_bytes"]))
    return {
        "mode": status.get("mode"),
        "note": status.get("note") or "",
        "gpus": gpus,
        "ram": ram_bar,
    }


def _bar(models: list[dict[str, Any]], total: int, used: int) -> dict[str, Any]:
    # A figure helixd accounts may run ahead of the driver's (a load just began): the
    # bar never shows more than the used memory split, and never a negative "other".
    held = sum(m["bytes"] for m in models)
    return {
        "total_bytes": total,
        "used_bytes": max(used, held),
        "models": models,
        "other_bytes": max(0, used - held),
    }


def _pick(source: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    return {f: source.get(f) for f in fields}


def _provider(info: Mapping[str, Any]) -> dict[str, Any]:
    last = info.get("last_exit")
    return _pick(info, PROVIDER_FIELDS) | {
        "last_exit": _pick(last, EXIT_FIELDS) if isinstance(last, Mapping) else None
    }


def _alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "key": alert.get("key"),
        "severity": alert.get("severity"),
        "message": alert.get("message"),
        "since": alert.get("fired_at_epoch"),
    }


def _job(job: Mapping[str, Any]) -> dict[str, Any]:
    last = job.get("last_run")
    run = None
    if isinstance(last, Mapping):
        run = _pick(last, RUN_FIELDS)
        started, took = last.get("started"), last.get("duration_s")
        run["finished_at"] = started + took if started is not None and took is not None else None
    return _pick(job, JOB_FIELDS) | {"last_run": run}
