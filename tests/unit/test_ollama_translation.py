"""The Ollama → OpenAI request translation, and Ollama's answer objects."""

from __future__ import annotations

import pytest

from helixd.proxy.ollama import BadOllamaRequest, _whole, translate
from helixd.proxy.ollama import _Answer as Answer


def test_a_streaming_chat_asks_for_usage_and_maps_options() -> None:
    t = translate(
        "/api/chat",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 5, "temperature": 0.1, "mirostat": 2},
            "format": "json",
        },
    )
    assert t.openai_path == "/v1/chat/completions" and t.kind == "chat" and t.stream
    assert t.body == {
        "model": "m",
        "max_tokens": 5,
        "temperature": 0.1,
        "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_a_whole_generate_puts_the_system_text_before_the_prompt() -> None:
    t = translate("/api/generate", {"model": "m", "prompt": "p", "system": "s", "stream": False})
    assert t.body == {"model": "m", "prompt": "s\n\np", "stream": False}
    assert (t.openai_path, t.kind, t.stream) == ("/v1/completions", "generate", False)


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/api/chat", {"model": "m", "messages": "hi"}, "'messages' must be a list"),
        ("/api/chat", {"model": "m", "messages": [{"content": "x"}]}, "needs a 'role'"),
        ("/api/generate", {"model": "m", "prompt": 3}, "'prompt' must be a string"),
        ("/api/embed", {"model": "m", "input": [1]}, "'input' must be a string or a list"),
        ("/api/chat", {"model": "m", "messages": [], "options": ["x"]}, "'options' must be"),
    ],
)
def test_bad_requests_name_the_field(path: str, body: dict[str, object], words: str) -> None:
    with pytest.raises(BadOllamaRequest, match=words):
        translate(path, body)


def test_token_counts_appear_only_when_the_upstream_reported_them() -> None:
    answer = Answer("m", "generate")
    counted = answer.final("x", "length", {"prompt_tokens": 3, "completion_tokens": 7})
    assert (counted["prompt_eval_count"], counted["eval_count"]) == (3, 7)
    assert counted["done_reason"] == "length" and counted["response"] == "x"
    unknown = answer.final("", None, {})
    assert "eval_count" not in unknown and "prompt_eval_count" not in unknown
    assert unknown["done_reason"] == "stop" and unknown["done"] is True


def test_the_older_embeddings_route_sends_one_input_and_answers_one_vector() -> None:
    t = translate("/api/embeddings", {"model": "m", "prompt": "p", "options": {"seed": 1}})
    # Sampling options mean nothing to an embedding: not sent.
    assert (t.openai_path, t.kind, t.stream) == ("/v1/embeddings", "embeddings", False)
    assert t.body == {"model": "m", "input": ["p"]}
    answer = Answer("m", "embeddings")
    assert _whole("embeddings", answer, {"data": [{"embedding": [0.5, 1.0]}]}) == {
        "embedding": [0.5, 1.0]
    }
    assert _whole("embeddings", answer, {"data": []}) == {"embedding": []}
    with pytest.raises(BadOllamaRequest, match="'prompt' must be a string"):
        translate("/api/embeddings", {"model": "m", "prompt": ["p"]})


def test_embed_sends_its_inputs_and_dimensions_but_no_sampling_options() -> None:
    t = translate(
        "/api/embed",
        {"model": "m", "input": "a", "dimensions": 4, "options": {"temperature": 0.2}},
    )
    assert t.body == {"model": "m", "input": ["a"], "dimensions": 4}
    with pytest.raises(BadOllamaRequest, match="'dimensions' must be a positive integer"):
        translate("/api/embed", {"model": "m", "input": "a", "dimensions": 0})
