"""Prometheus metrics of the endpoint and of residency, served at ``/metrics``.

One registry per daemon (not the library's global one), so tests and a second instance
in one process never share counters. Queue depth and in-flight counts are read from the
residency books at scrape time rather than updated on every request.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
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


class _PerRequest(Collector):
    """What every proxied request adds to: counts in plain dictionaries, turned into
    metric families when Prometheus scrapes.

    prometheus_client's Counter and Histogram take a lock and walk their label tables on
    every change: about 25 µs of a request's CPU here. The endpoint counts on one thread
    (its loop), so no lock is needed; a scrape runs on the same loop.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        # model → [count per bucket (the last one +Inf), sum]
        self.latency: dict[str, list[Any]] = {}
        self.ttft: dict[str, list[Any]] = {}
        self._bounds = [repr(float(b)) for b in _SECONDS] + ["+Inf"]  # as Go writes them

    @staticmethod
    def observe(table: dict[str, list[Any]], model: str, seconds: float) -> None:
        row = table.get(model)
        if row is None:
            row = table[model] = [[0] * (len(_SECONDS) + 1), 0.0]
        row[0][bisect_left(_SECONDS, seconds)] += 1
        row[1] += seconds

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily(
            "helix_requests", "Proxied requests", labels=["model", "route", "status"]
        )
        for labels, count in self.requests.items():
            requests.add_metric(list(labels), count)
        yield requests
        yield self._histogram("helix_request_seconds", "Whole request", self.latency)
        yield self._histogram(
            "helix_first_byte_seconds", "Time to the first byte of the answer", self.ttft
        )
        tokens = CounterMetricFamily(
            "helix_tokens", "Tokens reported by upstreams", labels=["model", "direction"]
        )
        for pair, count in self.tokens.items():
            tokens.add_metric(list(pair), count)
        yield tokens

    def _histogram(
        self, name: str, documentation: str, table: dict[str, list[Any]]
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=["model"])
        for model, (counts, total) in table.items():
            cumulative = list(itertools.accumulate(counts))
            family.add_metric([model], list(zip(self._bounds, cumulative, strict=True)), total)
        return family


class Metrics:
    """Everything helixd counts."""

    def __init__(self, residency: Residency) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._per_request = _PerRequest()
        r.register(self._per_request)
        self.errors = Counter(
            "helix_request_errors", "Failed attempts by class", ["model", "kind"], registry=r
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
        self.evictions = Counter("helix_evictions", "Models evicted", ["model"], registry=r)
        self.cooldowns = Counter("helix_cooldowns", "Cooldowns started", ["model"], registry=r)
        r.register(_ResidencyCollector(residency))
        residency.events.subscribe(self._observe)

    def request_done(
        self, model: str, route: str, status: int, seconds: float, first_byte_s: float | None
    ) -> None:
        """Count a finished request, its duration, and its time to the first byte."""
        counts = self._per_request
        key = (model, route, str(status))
        counts.requests[key] = counts.requests.get(key, 0) + 1
        counts.observe(counts.latency, model, seconds)
        if first_byte_s is not None:
            counts.observe(counts.ttft, model, first_byte_s)

    def request_refused(self, status: int) -> None:
        """Count a request refused before any model was tried."""
        key = ("-", "-", str(status))
        requests = self._per_request.requests
        requests[key] = requests.get(key, 0) + 1

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
        tokens = self._per_request.tokens
        for key, direction in (("prompt_tokens", "in"), ("completion_tokens", "out")):
            value = usage.get(key)
            if isinstance(value, int) and value > 0:
                tokens[model, direction] = tokens.get((model, direction), 0) + value

    def exposition(self) -> bytes:
        """The text a scrape gets."""
        return generate_latest(self.registry)
