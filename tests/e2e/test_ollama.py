"""Ollama under helixd, end to end: the real daemon drives the protocol fake of Ollama.

``tests/fakes/ollama_server.py`` speaks Ollama's API and runs each loaded model in a
runner process holding fake GPU memory (``gpu_holder.py``, seen by the fake NVML), with
Ollama's own scheduler in it (keep-alive expiry, max-loaded eviction), which helixd must
keep from ever firing.
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
from tests.e2e.gpu_host import FAKES, REPO, FakeGpuHost, MiB
from tests.e2e.views import models

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FakeOllama:
    """The fake's files: installed models and the registry ``pull`` fetches from."""

    def __init__(self, root: Path, gpu: FakeGpuHost | None) -> None:
        self.library = root / "ollama-library.json"
        self.registry = root / "ollama-registry.json"
        self.library.write_text("{}")
        self.registry.write_text("{}")
        self.gpu = gpu

    def install(self, name: str, mib: int, **spec: Any) -> None:
        library = json.loads(self.library.read_text())
        library[name] = {"mib": mib, **spec}
        self.library.write_text(json.dumps(library))

    def offer(self, name: str, mib: int, **spec: Any) -> None:
        registry = json.loads(self.registry.read_text())
        registry[name] = {"mib": mib, **spec}
        self.registry.write_text(json.dumps(registry))

    def provider(self) -> str:
        env = f'PYTHONPATH = "{REPO}"'
        if self.gpu is not None:
            env += f', HELIXD_FAKE_NVML_DIR = "{self.gpu.dir}"'
        return f"""
[resources]
vram_reserve_mib = 512
ram_reserve_mib = 0

[providers.ollama]
kind = "ollama"
command = ["{{python}}", "{FAKES / "ollama_server.py"}", "--library", "{self.library}",
           "--registry", "{self.registry}"]
env = {{ {env} }}
health = {{ interval_s = 1 }}
start_seconds = 30
stop_timeout_s = 5
"""


def model(name: str, model_id: str, **keys: Any) -> str:
    lines = [f"[models.{name}]", 'provider = "ollama"', f'id = "{model_id}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def server_url(helix: Any) -> str:
    process = helix.provider("ollama")
    assert process["state"] == "ready", process
    return f"http://127.0.0.1:{process['port']}"


def ollama_ps(helix: Any) -> dict[str, dict[str, Any]]:
    with OPENER.open(server_url(helix) + "/api/ps", timeout=5) as response:
        return {m["name"]: m for m in json.load(response)["models"]}


def load(helix: Any, name: str) -> None:
    result = helix.ctl("load", name, timeout=90)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def gpu_host(tmp_path: Path) -> FakeGpuHost:
    return FakeGpuHost(tmp_path)


def test_ollama_models_load_evict_and_unload_under_one_scheduler(
    helix: Any, gpu_host: FakeGpuHost, tmp_path: Path
) -> None:
    ollama = FakeOllama(tmp_path, gpu_host)
    for letter in "abcd":
        ollama.install(f"fam-{letter}:7b", 4096)
    ollama.install("big:32b", 14000)
    config = ollama.provider() + "".join(
        model(letter, f"fam-{letter}:7b", max_concurrency=3) for letter in "abcd"
    )
    config += model("big", "big:32b", max_concurrency=2)
    h = helix(config, extra_env=gpu_host.env())
    wait_for_sync(lambda: h.provider("ollama")["state"] == "ready", 30, what="ollama ready")
    environ = psutil.Process(h.provider("ollama")["pid"]).environ()
    # Ollama's own scheduler must never unload or evict; parallelism from the models.
    assert environ["OLLAMA_KEEP_ALIVE"] == "-1"
    assert int(environ["OLLAMA_MAX_LOADED_MODELS"]) >= 5
    assert environ["OLLAMA_NUM_PARALLEL"] == "3"
    for letter in "abcd":
        load(h, letter)
    # Four models: Ollama's default limit (3 per GPU) would have evicted one by now.
    assert set(ollama_ps(h)) == {"fam-a:7b", "fam-b:7b", "fam-c:7b", "fam-d:7b"}
    a = models(h)["a"]
    assert (a["state"], a["memory_source"], a["vram_bytes"]) == ("loaded", "measured", 4096 * MiB)
    assert gpu_host.used_mib() == 4 * 4096
    # Its size, estimated from Ollama's /api/tags (14000 MiB + 5 % + 256 MiB), does not fit
    # in the 7.5 GiB left: helixd evicts the two least recently used (a, b) through
    # Ollama's API before asking it to load.
    load(h, "big")
    after = models(h)
    assert {n: after[n]["state"] for n in "abcd"} == {
        "a": "unloaded",
        "b": "unloaded",
        "c": "loaded",
        "d": "loaded",
    }
    assert set(ollama_ps(h)) == {"fam-c:7b", "fam-d:7b", "big:32b"}
    assert gpu_host.used_mib() == 2 * 4096 + 14000
    assert models(h)["big"]["vram_bytes"] == 14000 * MiB  # measured from /api/ps
    # An unload goes through Ollama too, and its runner's memory comes back.
    assert h.ctl("unload", "c").returncode == 0
    assert set(ollama_ps(h)) == {"fam-d:7b", "big:32b"}
    wait_for_sync(lambda: gpu_host.used_mib() == 4096 + 14000, 10, what="c's memory freed")
    # Requests reach the model by helixd's name; Ollama is asked by its own.
    body = json.dumps({"model": "d", "messages": [{"role": "user", "content": "hi there"}]})
    request = urllib.request.Request(
        h.proxy_url + "/v1/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with OPENER.open(request, timeout=30) as response:
        answer = json.load(response)
    assert answer["choices"][0]["message"]["content"] == "echo: hi there"
    assert response.headers["x-helix-model"] == "d"


def test_a_model_partly_on_cpu_is_reported_so(
    helix: Any, gpu_host: FakeGpuHost, tmp_path: Path
) -> None:
    ollama = FakeOllama(tmp_path, gpu_host)
    ollama.install("wide:70b", 2048, cpu_mib=6144)
    h = helix(ollama.provider() + model("wide", "wide:70b"), extra_env=gpu_host.env())
    load(h, "wide")
    wide = models(h)["wide"]
    assert (wide["vram_bytes"], wide["ram_bytes"]) == (2048 * MiB, 6144 * MiB)
    assert wide["memory_detail"] == "partly on CPU: 75% of it in host RAM (Ollama's /api/ps)"


def test_a_dead_ollama_loses_its_models_and_a_missing_model_says_pull(
    helix: Any, tmp_path: Path
) -> None:
    ollama = FakeOllama(tmp_path, None)  # no GPU: Ollama runs models on the CPU
    ollama.install("tiny:1b", 512)
    config = ollama.provider() + model("tiny", "tiny:1b") + model("ghost", "ghost:1b")
    h = helix(config)
    load(h, "tiny")
    assert set(ollama_ps(h)) == {"tiny:1b"}
    missing = h.ctl("load", "ghost")
    assert missing.returncode == 1
    assert "ollama has no model 'ghost:1b'; pull it with: helixctl pull ghost:1b" in missing.stderr
    # The server dies: its models are gone with it, and helixd says so.
    first_pid = h.provider("ollama")["pid"]
    os.kill(first_pid, signal.SIGKILL)
    wait_for_sync(lambda: models(h)["tiny"]["state"] == "unloaded", 20, what="tiny reported lost")
    assert models(h)["tiny"]["message"].startswith("lost: ")
    # The supervisor restarts Ollama; the model loads again in the new server.
    wait_for_sync(
        lambda: (
            h.provider("ollama")["state"] == "ready" and h.provider("ollama")["pid"] != first_pid
        ),
        30,
        what="ollama restarted",
    )
    load(h, "tiny")
    assert set(ollama_ps(h)) == {"tiny:1b"}


def test_a_model_ollama_drops_on_its_own_is_reported_lost(helix: Any, tmp_path: Path) -> None:
    ollama = FakeOllama(tmp_path, None)
    ollama.install("tiny:1b", 512)
    h = helix(ollama.provider() + model("tiny", "tiny:1b"))
    load(h, "tiny")
    # Someone unloads it behind helixd's back (Ollama's CLI, another client).
    request = urllib.request.Request(
        server_url(h) + "/api/generate",
        data=json.dumps({"model": "tiny:1b", "keep_alive": 0}).encode(),
    )
    with OPENER.open(request, timeout=10):
        pass
    wait_for_sync(lambda: models(h)["tiny"]["state"] == "unloaded", 20, what="tiny reported lost")
    assert "no longer lists it in /api/ps" in models(h)["tiny"]["message"]


def test_the_ollama_client_talks_natively_to_ollama_hosted_models(
    helix: Any, tmp_path: Path
) -> None:
    ollama_client = import_real_provider("ollama")
    ollama = FakeOllama(tmp_path, None)
    ollama.install("qwen2.5-coder:7b", 512)
    h = helix(ollama.provider() + model("coder", "qwen2.5-coder:7b"))
    c = ollama_client.Client(host=h.proxy_url)
    # Passed through untouched: the answer names the model as Ollama knows it.
    pieces = list(
        c.chat(
            model="coder",
            messages=[{"role": "user", "content": "one two"}],
            stream=True,
            keep_alive=0,  # a client's keep-alive must not make Ollama unload on its own
        )
    )
    assert pieces[-1].done and pieces[0].model == "qwen2.5-coder:7b"
    assert "".join(p.message.content for p in pieces) == "echo: one two"
    assert (pieces[-1].prompt_eval_count, pieces[-1].eval_count) == (2, 3)
    assert c.generate(model="coder", prompt="abc", stream=False).response == "echo: abc"
    assert len(c.embed(model="coder", input=["a", "b"]).embeddings) == 2
    assert set(ollama_ps(h)) == {"qwen2.5-coder:7b"}
    assert ollama_ps(h)["qwen2.5-coder:7b"]["expires_at"] > "2100"  # kept for ever
    assert models(h)["coder"]["state"] == "loaded"
    # A load/unload through helixd's Ollama API goes through the scheduler.
    assert c.generate(model="coder", keep_alive=0).done_reason == "unload"
    assert ollama_ps(h) == {}


def test_helixctl_pull_shows_progress_and_fails_clearly_on_an_unknown_model(
    helix: Any, tmp_path: Path
) -> None:
    ollama = FakeOllama(tmp_path, None)
    ollama.offer("llama3.2:3b", 2048)
    h = helix(ollama.provider() + model("small", "llama3.2:3b"))
    wait_for_sync(lambda: h.provider("ollama")["state"] == "ready", 30, what="ollama ready")
    # Not installed yet: loading it says how to get it.
    assert "helixctl pull llama3.2:3b" in h.ctl("load", "small").stderr
    pulled = h.ctl("pull", "llama3.2:3b", timeout=60)
    assert pulled.returncode == 0, pulled.stderr
    lines = pulled.stdout.splitlines()
    assert lines[0] == "pulling manifest"
    assert any("100%" in line and "2.0 GiB/2.0 GiB" in line for line in lines), lines
    assert lines[-1] == "success"
    assert h.ctl("load", "small").returncode == 0  # installed now
    as_json = h.ctl("--json", "pull", "llama3.2:3b", timeout=60)
    assert json.loads(as_json.stdout.splitlines()[-1]) == {"status": "success"}
    unknown = h.ctl("pull", "no-such-model:1b", timeout=60)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().endswith(
        "helixctl: ollama: pull no-such-model:1b: pull model manifest: file does not exist"
    )
    hostile = h.ctl("pull", "../../etc/passwd")
    assert hostile.returncode == 1
    assert "model must be an Ollama model name like qwen2.5:7b" in hostile.stderr
