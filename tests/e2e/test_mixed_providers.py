"""Ollama, two vLLM models and llama.cpp on one fake 24 GiB card, under one scheduler.

Each provider is its protocol fake, a real process holding fake GPU memory that the fake
NVML reports per process: ``ollama_server.py`` (a runner per model), ``vllm_server.py``
(refuses connections while its engine starts; takes ``--gpu-memory-utilization`` of the
card in an engine-core child; sleeps and wakes), ``llama_server.py`` (answers 503
"Loading model" while it loads).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import import_real_provider, wait_for_sync
from tests.e2e.gpu_host import FAKES, REPO, FakeGpuHost, MiB
from tests.e2e.test_ollama import FakeOllama, ollama_ps
from tests.e2e.views import models, states

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CARD_MIB = 24576


def load(helix: Any, name: str) -> None:
    result = helix.ctl("load", name, timeout=90)
    assert result.returncode == 0, result.stderr


def utilization(helix: Any, name: str) -> float:
    command = models(helix)[name]["process"]["command"]
    return float(command[command.index("--gpu-memory-utilization") + 1])


def ollama_loaded_by_helixd(helix: Any) -> set[str]:
    """Ollama ids of the models helixd books as loaded on Ollama."""
    ids = {"fast": "qwen2.5:7b", "big": "qwen2.5:14b"}
    return {ids[n] for n, m in models(helix).items() if n in ids and m["state"] == "loaded"}


def config(gpu: FakeGpuHost, ollama: FakeOllama, tmp_path: Path, big_keep: str = "") -> str:
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps({"load_seconds": 1, "host_mib": 64, "residual_mib": 512}))
    coder = tmp_path / "coder.json"
    coder.write_text(json.dumps({"load_seconds": 0.5}))
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"mib": 3000, "load_seconds": 1}))
    env = f'{{ PYTHONPATH = "{REPO}", HELIXD_FAKE_NVML_DIR = "{gpu.dir}" }}'
    keep = f'keep_alive = "{big_keep}"\n' if big_keep else ""
    return (
        ollama.provider()
        + f"""
[scheduler]
keep_alive = "forever"

[providers.vllm]
kind = "vllm"
command = ["{{python}}", "{FAKES / "vllm_server.py"}", "serve", "{{model_path}}",
           "--served-model-name", "{{model}}", "--host", "{{host}}", "--port", "{{port}}",
           "--gpu-memory-utilization", "{{gpu_memory_utilization}}"]
env = {env}
health = {{ interval_s = 1 }}
start_seconds = 30
stop_timeout_s = 5

[providers.llama]
kind = "llamacpp"
command = ["{{python}}", "{FAKES / "llama_server.py"}", "-m", "{{model_path}}",
           "--host", "{{host}}", "--port", "{{port}}", "-ngl", "{{gpu_layers}}"]
env = {env}
health = {{ interval_s = 1 }}
start_seconds = 30
stop_timeout_s = 5

[models.fast]
provider = "ollama"
id = "qwen2.5:7b"

[models.big]
provider = "ollama"
id = "qwen2.5:14b"
{keep}
[models.deep]
provider = "vllm"
path = "{deep}"
vram_mib = 8192
sleep_mode = true
{keep}
[models.coder]
provider = "vllm"
path = "{coder}"
vram_mib = 6144

[models.tiny]
provider = "llama"
path = "{tiny}"
vram_mib = 3000
"""
    )


def test_four_providers_share_one_card_under_one_scheduler(helix: Any, tmp_path: Path) -> None:
    gpu = FakeGpuHost(tmp_path)
    ollama = FakeOllama(tmp_path, gpu)
    ollama.install("qwen2.5:7b", 5000)
    ollama.install("qwen2.5:14b", 9000)
    h = helix(config(gpu, ollama, tmp_path), extra_env=gpu.env())
    wait_for_sync(lambda: h.provider("ollama")["state"] == "ready", 30, what="ollama ready")

    # All four fit: Ollama's model measured from /api/ps, vLLM's shares of the card
    # from their budgets (rounded down to the hundredth vLLM is given), llama.cpp's file.
    for name in ("fast", "deep", "coder", "tiny"):
        load(h, name)
    assert (utilization(h, "deep"), utilization(h, "coder")) == (0.33, 0.25)
    # What the four processes hold, as NVML reports it, fits the card within its reserve.
    assert gpu.used_mib() <= CARD_MIB - 512
    held = sum(models(h)[n]["vram_bytes"] for n in ("fast", "deep", "coder", "tiny"))
    assert held // MiB == gpu.used_mib()  # and helixd's books say the same
    deep_bytes = math.ceil(0.33 * CARD_MIB * MiB)  # vLLM takes ceil(fraction x total)
    assert models(h)["deep"]["vram_bytes"] == deep_bytes  # measured: its engine-core child
    assert models(h)["fast"]["vram_bytes"] == 5000 * MiB
    # vLLM was started with a key only helixd knows: its port refuses anyone else.
    direct = urllib.request.Request(models(h)["deep"]["upstream"] + "/v1/models")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(direct, timeout=10)
    assert refused.value.code == 401
    assert set(ollama_ps(h)) == ollama_loaded_by_helixd(h) == {"qwen2.5:7b"}
    assert h.ctl("pin", "tiny").returncode == 0

    # A 9000 MiB Ollama model (estimated 9706 from /api/tags) needs room: helixd evicts
    # across providers in LRU order — fast (Ollama), then deep (vLLM, put to sleep) —
    # never the pinned llama.cpp model.
    load(h, "big")
    assert states(h) == {
        "fast": "unloaded",
        "big": "loaded",
        "deep": "sleeping",
        "coder": "loaded",
        "tiny": "loaded",
    }
    deep = models(h)["deep"]
    assert deep["vram_bytes"] == 512 * MiB  # what it keeps on the GPU asleep
    assert deep["ram_bytes"] >= 64 * MiB  # its weights, in its processes' host memory
    deep_pid = deep["process"]["pid"]
    assert set(ollama_ps(h)) == ollama_loaded_by_helixd(h) == {"qwen2.5:14b"}

    # A request for the sleeping model wakes it (same process, no cold start); coder,
    # now the least recently used, is stopped to make the room back.
    body = json.dumps({"model": "deep", "messages": [{"role": "user", "content": "wake"}]})
    request = urllib.request.Request(
        h.proxy_url + "/v1/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with OPENER.open(request, timeout=60) as response:
        assert json.load(response)["choices"][0]["message"]["content"] == "echo: wake"
    deep = models(h)["deep"]
    assert (deep["state"], deep["process"]["pid"]) == ("loaded", deep_pid)
    assert deep["message"] == "woken from sleep"
    assert deep["vram_bytes"] == deep_bytes  # its VRAM is counted back
    assert states(h)["coder"] == "unloaded"
    assert gpu.used_mib() == (deep_bytes + (9000 + 3000) * MiB) // MiB
    assert set(ollama_ps(h)) == ollama_loaded_by_helixd(h)

    # keep_alive applies across providers: the Ollama model unloads through Ollama's API,
    # the vLLM model sleeps again; Ollama never unloaded anything on its own.
    h.write_config(config(gpu, ollama, tmp_path, big_keep="1s"))
    assert h.ctl("reload").returncode == 0
    wait_for_sync(
        lambda: states(h)["big"] == "unloaded" and states(h)["deep"] == "sleeping",
        20,
        what="big unloaded and deep asleep after their keep_alive",
    )
    assert ollama_ps(h) == {}
    assert psutil.Process(deep_pid).is_running()
    wait_for_sync(lambda: gpu.used_mib() == 512 + 3000, 10, what="the card to be freed")

    # The official ollama client works through helixd for llama.cpp- and vLLM-hosted
    # models too (translated), waking the sleeping one on the way.
    client = import_real_provider("ollama").Client(host=h.proxy_url)
    for name in ("tiny", "deep"):
        answer = client.chat(model=name, messages=[{"role": "user", "content": "hi there"}])
        assert answer.message.content == "echo: hi there"
    assert states(h)["deep"] == "loaded"
