"""helixd driving llama.cpp's ``llama-server`` in router mode (kind ``llamacpp-router``).

One supervised ``llama-server`` without a model is a router that runs a child process
per loaded model; helixd writes its preset file, loads and unloads through
``POST /models/load`` and ``/models/unload``, and decides residency itself (the router
runs with no model limit and no autoload). The binary is the real one (``make
llama-server``), the models tiny random-weight GGUFs, RAM-only.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import import_real_provider, wait_for_sync
from tests.e2e.llama_server_bin import llama_server_binary
from tests.e2e.views import models
from tests.fakes.tiny_gguf import write_tiny_llama

openai = import_real_provider("openai")
ollama = import_real_provider("ollama")


@pytest.fixture(scope="module")
def llama_server() -> Path:
    return llama_server_binary()


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    paths = {name: folder / f"{name}.gguf" for name in ("a", "b", "c")}
    for seed, path in enumerate(paths.values()):
        write_tiny_llama(path, seed=seed)
    junk = folder / "junk.gguf"
    junk.write_text("not a model\n")
    paths["junk"] = junk
    return paths


def config(binary: Path, paths: dict[str, Path], command: str = "", extra: str = "") -> str:
    text = f"""
[resources]
gpus = "none"
max_loaded_models = 2
{extra}

[providers.router]
kind = "llamacpp-router"
command = ["{binary}", "-t", "1"{command}]
start_seconds = 60
health = {{ interval_s = 0.5 }}
"""
    for name, path in paths.items():
        text += f'\n[models.{name}]\nprovider = "router"\npath = "{path}"\nctx = 256\n'
    return text


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def router_states(h: Any) -> dict[str, str]:
    """The router's own view: ``GET /models`` status by model id."""
    port = h.provider("router")["port"]
    listing = get_json(f"http://127.0.0.1:{port}/models")
    # Only helixd's: the router also lists llama.cpp's own download cache, if any.
    return {m["id"]: m["status"]["value"] for m in listing["data"] if m["source"] == "preset"}


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def chat(h: Any, model: str) -> Any:
    client = openai.OpenAI(base_url=h.proxy_url + "/v1", api_key="unused", max_retries=0)
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        extra_body={"ignore_eos": True},  # random weights say </s> whenever sampled
    )


def test_helixd_loads_evicts_and_unloads_through_the_routers_api(
    helix: Any, llama_server: Path, gguf: dict[str, Path]
) -> None:
    three = {name: gguf[name] for name in ("a", "b", "c")}
    h = helix(config(llama_server, three))
    router = h.wait_state("router", "ready", timeout=60)
    port = router["port"]
    props = get_json(f"http://127.0.0.1:{port}/props")
    assert props["role"] == "router"
    assert props["max_instances"] == 0 and props["models_autoload"] is False
    assert set(models(h)) == {"a", "b", "c"}

    # On demand through the endpoint; the router's child for a is measured.
    assert chat(h, "a").usage.completion_tokens == 3
    a = models(h)["a"]
    assert a["state"] == "loaded" and a["upstream"] == f"http://127.0.0.1:{port}"
    assert a["memory_source"] == "measured" and a["ram_bytes"] > 0
    assert router_states(h) == {"a": "loaded"}  # the preset names what was ever loaded
    children = psutil.Process(router["pid"]).children()
    assert len(children) == 1 and "--alias" in children[0].cmdline()
    a_child = children[0].pid

    c = ollama.Client(host=h.proxy_url)
    assert c.chat(
        model="a", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2}
    ).done

    # max_loaded_models = 2 is helixd's: c's load evicts a, the least recently used.
    for name in ("b", "c"):
        loaded = h.ctl("load", name, timeout=90)
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.strip() == f"{name}: loaded on ram"
    after = models(h)
    assert (
        after["a"]["state"] == "unloaded" and after["a"]["message"] == "evicted for a load on ram"
    )
    assert router_states(h) == {"a": "unloaded", "b": "loaded", "c": "loaded"}
    wait_for_sync(lambda: gone(a_child), what="a's child to exit")
    preset = (h.state_dir / "router.models.ini").read_text()
    for name in ("a", "b", "c"):
        assert f"[{name}]\nmodel = {three[name]}\nctx-size = 256\ndevice = none\n" in preset

    assert h.ctl("unload", "b").returncode == 0
    assert router_states(h)["b"] == "unloaded"
    assert models(h)["b"]["state"] == "unloaded"
    logs = h.ctl("logs", "router", "-n", "400").stdout
    assert "spawning server instance with name=c" in logs

    # Stopping helixd stops the router and its children (one process group).
    tree = [router["pid"], *(p.pid for p in psutil.Process(router["pid"]).children())]
    assert h.stop() == 0
    assert all(gone(pid) for pid in tree)


def test_a_child_that_dies_is_lost_and_the_next_request_loads_it_again(
    helix: Any, llama_server: Path, gguf: dict[str, Path]
) -> None:
    h = helix(config(llama_server, {"a": gguf["a"]}))
    router = h.wait_state("router", "ready", timeout=60)
    assert h.ctl("load", "a", timeout=90).returncode == 0
    (child,) = psutil.Process(router["pid"]).children()
    os.kill(child.pid, signal.SIGKILL)
    wait_for_sync(lambda: models(h)["a"]["state"] == "unloaded", what="a to be lost")
    assert models(h)["a"]["message"] == "lost: router no longer lists it in /models"
    assert h.provider("router")["state"] == "ready"  # the router itself lives on
    assert chat(h, "a").usage.completion_tokens == 3
    (again,) = psutil.Process(router["pid"]).children()
    assert again.pid != child.pid and models(h)["a"]["state"] == "loaded"


def test_a_model_the_child_cannot_load_fails_with_the_childs_own_words(
    helix: Any, llama_server: Path, gguf: dict[str, Path]
) -> None:
    h = helix(config(llama_server, {"a": gguf["a"], "junk": gguf["junk"]}))
    h.wait_state("router", "ready", timeout=60)
    said = "gguf_init_from_reader: invalid magic characters: 'not ', expected 'GGUF'"
    result = h.ctl("load", "junk", timeout=90)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "helixctl: junk failed to load: router: the llama-server child of junk exited with "
        f"code 1 while loading: {said}; see helixctl logs router"
    ), result.stderr
    assert "exiting due to model loading error" in result.stderr  # its last lines follow
    assert models(h)["junk"]["state"] == "failed"
    # The router and its other models are unharmed.
    assert chat(h, "a").usage.completion_tokens == 3


def test_a_router_that_would_evict_on_its_own_is_refused(
    helix: Any, llama_server: Path, gguf: dict[str, Path]
) -> None:
    h = helix(config(llama_server, {"a": gguf["a"]}, command=', "--models-max", "4"'))
    h.wait_state("router", "ready", timeout=60)
    result = h.ctl("load", "a", timeout=90)
    assert result.returncode == 1
    assert (
        "router: it evicts on its own past --models-max 4, so two schedulers would fight; "
        "remove --models-max/--models-autoload from providers.router.command"
    ) in result.stderr
