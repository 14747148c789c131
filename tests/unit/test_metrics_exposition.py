"""The endpoint's own per-request counts expose exactly what prometheus_client's Counter
and Histogram would for the same observations (but their ``_created`` samples)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from helixd.proxy.metrics import _SECONDS, Metrics


class NoModels:
    """What Metrics reads of residency: no models, no events."""

    class events:  # stands in for the hub attribute
        @staticmethod
        def subscribe(handler: Any) -> None:
            return None

    @staticmethod
    def views() -> list[Any]:
        return []


def reference(observations: list[tuple[str, str, int, float, float | None]]) -> set[str]:
    r = CollectorRegistry()
    requests = Counter(
        "helix_requests", "Proxied requests", ["model", "route", "status"], registry=r
    )
    latency = Histogram(
        "helix_request_seconds", "Whole request", ["model"], buckets=_SECONDS, registry=r
    )
    ttft = Histogram(
        "helix_first_byte_seconds",
        "Time to the first byte of the answer",
        ["model"],
        buckets=_SECONDS,
        registry=r,
    )
    tokens = Counter(
        "helix_tokens", "Tokens reported by upstreams", ["model", "direction"], registry=r
    )
    for model, route, status, seconds, first in observations:
        requests.labels(model, route, str(status)).inc()
        latency.labels(model).observe(seconds)
        if first is not None:
            ttft.labels(model).observe(first)
    tokens.labels("m", "in").inc(7)
    tokens.labels("m", "out").inc(3)
    return lines(generate_latest(r))


def lines(text: bytes) -> set[str]:
    return {line for line in text.decode().splitlines() if "_created" not in line}


def test_per_request_counts_read_as_prometheus_clients_own() -> None:
    observations = [
        ("m", "-", 200, 0.0004, 0.0003),
        ("m", "-", 200, 0.003, 0.002),
        ("m", "coding", 502, 0.7, None),
        ("n", "-", 200, 400.0, 12.0),  # past the last bucket: +Inf only
        ("m", "-", 200, 0.005, 0.005),  # on a bound: counted in that bucket (le)
    ]
    metrics = Metrics(NoModels())  # type: ignore[arg-type]
    for model, route, status, seconds, first in observations:
        metrics.request_done(model, route, status, seconds, first)
    metrics.count_tokens("m", {"prompt_tokens": 7, "completion_tokens": 3})
    ours = lines(metrics.exposition())
    theirs = reference(observations)
    assert theirs <= ours, sorted(theirs - ours)
