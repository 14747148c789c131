"""The Ollama dialect of the endpoint, end to end, through the official ``ollama`` client.

Every route an Ollama front-end uses (``list``, ``show``, ``ps``, ``chat``, ``generate``,
``embed``, ``embeddings``) against the real daemon: for models helixd translates to the
OpenAI dialect (echo servers, one of them declared with a real tiny GGUF file whose
header ``show`` reads), for a route and an alias, and for models of an Ollama provider,
which Ollama answers itself (the protocol fake of ``tests/fakes/ollama_server.py``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from helixd.providers.echo import embed
from tests.conftest import import_real_provider, wait_for_sync
from tests.e2e.test_ollama import FakeOllama, model, ollama_ps
from tests.e2e.test_proxy import echo_models
from tests.e2e.views import states
from tests.fakes.tiny_gguf import CHAT_TEMPLATE, write_tiny_llama

ollama = import_real_provider("ollama")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ECHO_DIM = 8  # the echo server's default embedding size


def get(h: Any, path: str) -> Any:
    with OPENER.open(h.proxy_url + path, timeout=30) as response:
        return json.load(response)


def post(h: Any, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        h.proxy_url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with OPENER.open(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_tiny_llama(tmp_path / "tiny-llama.gguf", n_ctx_train=512)


def config(gguf: Path) -> str:
    # Two echo providers: the keys of echo_models go on every model of one provider.
    return (
        echo_models("coder", aliases=["code"], ctx=2048)
        + echo_models("tiny", provider="echo2", path=str(gguf), ctx=256)
        + '\n[routes.coding]\ncandidates = ["code", "tiny"]\n'
    )


def test_listings_show_each_model_once_with_its_aliases_and_mark_routes(
    helix: Any, tiny_gguf: Path
) -> None:
    h = helix(config(tiny_gguf))
    c = ollama.Client(host=h.proxy_url)
    # The client parses the listing (it ignores helixd's extra field); no alias twice.
    assert [m.model for m in c.list().models] == ["coder", "tiny", "coding"]
    cards = {m["name"]: m for m in get(h, "/api/tags")["models"]}
    assert cards["coder"]["helix"] == {"state": "unloaded", "provider": "echo", "aliases": ["code"]}
    assert cards["coding"]["helix"] == {
        "kind": "route",
        "candidates": ["coder", "tiny"],
        "strategy": "fallback",
    }
    # Details from the GGUF header where there is one, empty where nothing says.
    tiny = c.list().models[1].details
    assert (tiny.format, tiny.family, tiny.quantization_level) == ("gguf", "llama", "F32")
    assert tiny.parameter_size.endswith("K")  # a toy: some hundred thousand weights
    assert cards["coder"]["details"]["format"] == cards["coder"]["details"]["family"] == ""
    # The OpenAI listing keeps aliases (marked) and lists routes too.
    listed = {m["id"]: m["helix"] for m in get(h, "/v1/models")["data"]}
    assert listed["code"] == {"state": "unloaded", "provider": "echo", "alias_of": "coder"}
    assert listed["coder"]["aliases"] == ["code"]
    assert listed["coding"] == cards["coding"]["helix"]
    assert get(h, "/v1/models/coding")["helix"]["kind"] == "route"


def test_show_answers_from_the_config_and_the_gguf_header_without_loading(
    helix: Any, tiny_gguf: Path
) -> None:
    h = helix(config(tiny_gguf))
    c = ollama.Client(host=h.proxy_url)
    shown = c.show("tiny")
    assert shown.details.family == "llama" and shown.details.format == "gguf"
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 512  # what the model was trained for
    assert shown.parameters.split() == ["num_ctx", "256"]  # what helixd serves it with
    assert shown.template == CHAT_TEMPLATE
    assert shown.modified_at is not None
    assert shown.modified_at.timestamp() == pytest.approx(os.stat(tiny_gguf).st_mtime)
    raw = post(h, "/api/show", {"model": "tiny"})
    assert raw["capabilities"] == ["completion"]
    assert "tokenizer.ggml.tokens" in raw["model_info"]  # a vocabulary, left empty
    assert raw["model_info"]["tokenizer.ggml.tokens"] == []
    # An alias is its model; a route is the model a request would get first.
    alias = post(h, "/api/show", {"model": "code"})
    assert alias["parameters"].split() == ["num_ctx", "2048"]
    assert alias["details"]["family"] == "" and alias["model_info"] == {}
    assert alias["helix"] == {
        "model": "coder",
        "state": "unloaded",
        "provider": "echo",
        "alias_of": "coder",
    }
    route = post(h, "/api/show", {"name": "coding"})  # Ollama's older field still works
    assert route["helix"]["route"] == "coding" and route["helix"]["model"] == "coder"
    with pytest.raises(ollama.ResponseError) as unknown:
        c.show("nope")
    assert unknown.value.status_code == 404
    assert "model 'nope' not found" in unknown.value.error
    # Nothing was loaded to answer.
    assert set(states(h).values()) == {"unloaded"}
    assert c.ps().models == []


def test_the_ollama_client_chats_generates_and_embeds_through_a_route_and_an_alias(
    helix: Any, tiny_gguf: Path
) -> None:
    h = helix(config(tiny_gguf))
    c = ollama.Client(host=h.proxy_url)
    answer = c.chat(model="coding", messages=[{"role": "user", "content": "hello there"}])
    assert answer.message.content == "echo: hello there"
    assert c.generate(model="code", prompt="abc", stream=False).response == "echo: abc"
    assert c.embed(model="coding", input=["x", "y"]).embeddings == [
        pytest.approx(embed("x", ECHO_DIM)),
        pytest.approx(embed("y", ECHO_DIM)),
    ]
    # The older embeddings route: one prompt, one vector, the same one.
    assert c.embeddings(model="code", prompt="x").embedding == pytest.approx(embed("x", ECHO_DIM))
    resident = c.ps().models
    assert [m.model for m in resident] == ["coder"]  # not again as "code"
    assert get(h, "/api/ps")["models"][0]["helix"]["aliases"] == ["code"]
    # An empty legacy embeddings loads its model, as with Ollama.
    assert c.embeddings(model="tiny", prompt="").embedding == []
    assert states(h)["tiny"] == "loaded"
    # The client checks types itself: a bad body, sent by hand, gets Ollama's error shape.
    with pytest.raises(urllib.error.HTTPError) as bad:
        post(h, "/api/embeddings", {"model": "tiny", "prompt": 3})
    assert bad.value.code == 400
    assert json.load(bad.value) == {"error": "'prompt' must be a string"}


def test_ollama_hosted_models_are_shown_and_embedded_by_ollama_itself(
    helix: Any, tmp_path: Path
) -> None:
    fake = FakeOllama(tmp_path, None)
    fake.install("qwen2.5-coder:7b", 512)
    text = fake.provider() + model("coder", "qwen2.5-coder:7b", aliases=["code"])
    text += model("ghost", "ghost:1b")  # configured, never pulled
    h = helix(text)
    wait_for_sync(lambda: h.provider("ollama")["state"] == "ready", 30, what="ollama ready")
    c = ollama.Client(host=h.proxy_url)
    shown = c.show("code")  # by alias: Ollama is asked by its own name
    assert shown.details.family == "fake" and shown.template == "{{ .Prompt }}"
    assert shown.modelinfo["fake.context_length"] == 4096
    assert ollama_ps(h) == {}  # Ollama's show loads nothing either
    with pytest.raises(ollama.ResponseError) as missing:
        c.show("ghost")
    assert missing.value.status_code == 404
    assert missing.value.error == "model 'ghost:1b' not found"  # Ollama's own words
    vector = c.embeddings(model="coder", prompt="abc").embedding
    assert vector == pytest.approx(embed("abc", ECHO_DIM))
    assert set(ollama_ps(h)) == {"qwen2.5-coder:7b"}
    assert ollama_ps(h)["qwen2.5-coder:7b"]["expires_at"] > "2100"  # helixd's lifetime
    assert states(h)["coder"] == "loaded"
