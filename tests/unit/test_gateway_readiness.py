"""Readiness for gateways: from residency's books alone, never by loading a model."""

from __future__ import annotations

import pytest

from helixd.proxy.readiness import best, model_readiness, probe_answer
from helixd.scheduler.core import ModelState


@pytest.mark.parametrize(
    ("state", "failed_until", "cooling", "expected"),
    [
        (ModelState.LOADED, 0.0, False, "loaded"),
        (ModelState.UNLOADED, 0.0, False, "loadable"),
        (ModelState.LOADING, 0.0, False, "loadable"),
        (ModelState.UNLOADING, 0.0, False, "loadable"),
        (ModelState.SLEEPING, 0.0, False, "loadable"),
        # requests fail fast until failed_until; after it the next request tries again
        (ModelState.FAILED, 110.0, False, "failed"),
        (ModelState.FAILED, 90.0, False, "loadable"),
        # a model whose requests keep failing cools down: a gateway should go elsewhere
        (ModelState.LOADED, 0.0, True, "failed"),
        (ModelState.UNLOADED, 0.0, True, "failed"),
    ],
)
def test_readiness_of_a_model(
    state: ModelState, failed_until: float, cooling: bool, expected: str
) -> None:
    assert model_readiness(state, failed_until, 100.0, cooling) == expected


def test_a_route_is_as_ready_as_its_readiest_candidate() -> None:
    assert best(["failed", "loadable", "loaded"]) == "loaded"
    assert best(["failed", "loadable"]) == "loadable"
    assert best(["failed"]) == "failed"
    assert best([]) == "failed"


def test_probe_answers_have_the_shape_of_the_route_asked() -> None:
    chat = probe_answer("chat/completions", "m", "loaded")
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["content"] == "helixd: m is loaded"
    assert probe_answer("completions", "m", "loadable")["choices"][0]["text"].endswith("loadable")
    assert probe_answer("embeddings", "m", "loaded")["data"][0]["embedding"] == [0.0]
