"""Prometheus metrics of the endpoint and of residency, served at ``/metrics``.

One registry per daemon (not the library's global one), so tests and a second instance
in one process never share counters. Queue depth and in-flight counts are read from the
residency books at scrape time rather than updated on every request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from helixd.scheduler import Event, Evicted, LoadEnded, Residency

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Latency buckets from sub-millisecond (an echo answer) to minutes (a long generation).
_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LOAD_SECONDS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _ResidencyCollector(Collector):
    """Per-model gauges read from the books when Prometheus scrapes."""

    def __init__(self, residency: Residency) -> None:
        self.residency = residency

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued = GaugeMetricFamily("helix_queue_depth", "Requests waiting", labels=["model"])
        in_flight = GaugeMetricFamily("helix_in_flight", "Requests served now", labels=["model"])
        loaded = GaugeMetricFamily("helix_model_loaded", "1 when resident", labels=["model"])
        for model in self.residency.views():
            queued.add_metric([model.name], model.queued)
            in_flight.add_metric([model.name], model.in_flight)
            loaded.add_metric([model.name], 1 if model.loaded else 0)
        yield queued
        yield in_flight
        yield loaded


class Metrics:
    """Everything helixd counts."""

    def __init__(self, residency: Residency) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "helix_requests", "Proxied requests", ["model", "route", "status"], registry=r
        )
        self.errors = Counter(
            "helix_request_errors", "Failed attempts by class", ["model", "kind"], registry=r
        )
        self.latency = Histogram(
            "helix_request_seconds", "Whole request", ["model"], buckets=_SECONDS, registry=r
        )
        self.ttft = Histogram(
            "helix_first_byte_seconds",
            "Time to the first byte of the answer",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.loads = Counter(
            "helix_model_loads", "Loads by result", ["model", "result"], registry=r
        )
        self.load_seconds = Histogram(
            "helix_model_load_seconds",
            "Load duration",
            ["model"],
            buckets=_LOAD_SECONDS,
            registry=r,
        )
        self.tokens = Counter(
            "helix_tokens", "Tokens reported by upstreams", ["model", "direction"], registry=r
        )
        self.evictions = Counter("helix_evictions", "Models evicted", ["model"], registry=r)
        self.cooldowns = Counter("helix_cooldowns", "Cooldowns started", ["model"], registry=r)
        r.register(_ResidencyCollector(residency))
        residency.events.subscribe(self._observe)
        # labels() costs microseconds (a lock, a tuple, a dict): the hot path keeps the
        # children it has asked for. Label values are few (models, routes, statuses).
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_done(
        self, model: str, route: str, status: int, seconds: float, first_byte_s: float | None
    ) -> None:
        """Count a finished request, its duration, and its time to the first byte."""
        self._child(self.requests, model, route, str(status)).inc()
        self._child(self.latency, model).observe(seconds)
        if first_byte_s is not None:
            self._child(self.ttft, model).observe(first_byte_s)

    def request_refused(self, status: int) -> None:
        """Count a request refused before any model was tried."""
        self._child(self.requests, "-", "-", str(status)).inc()

    def _observe(self, event: Event) -> None:
        """Count residency's loads (with their duration) and evictions."""
        if isinstance(event, LoadEnded):
            self.loads.labels(event.model, "ok" if event.ok else "failed").inc()
            if event.ok:
                self.load_seconds.labels(event.model).observe(event.seconds)
        elif isinstance(event, Evicted):
            self.evictions.labels(event.model).inc()

    def count_tokens(self, model: str, usage: dict[str, object]) -> None:
        """Add an answer's reported usage (prompt → in, completion → out)."""
        for key, direction in (("prompt_tokens", "in"), ("completion_tokens", "out")):
            value = usage.get(key)
            if isinstance(value, int) and value > 0:
                self._child(self.tokens, model, direction).inc(value)

    def exposition(self) -> bytes:
        """The text a scrape gets."""
        return generate_latest(self.registry)
