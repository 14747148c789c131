"""LocalAI and TabbyAPI under helixd, end to end, against their protocol fakes.

``tests/fakes/localai_server.py`` runs each loaded model in a backend process of its own
holding fake GPU memory (and has LocalAI's own LRU limit and watchdogs, which helixd
must keep off); ``tests/fakes/tabby_server.py`` holds one model at a time inside its
own process and wants the admin key from the ``api_tokens.yml`` it writes on first start.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import wait_for_sync
from tests.e2e.gpu_host import FAKES, REPO, FakeGpuHost, MiB
from tests.e2e.views import models, states

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, headers: dict[str, str] | None = None) -> Any:
    with OPENER.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as answer:
        return json.load(answer)


def chat(helix: Any, model: str) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        helix.proxy_url + "/v1/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with OPENER.open(request, timeout=60) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def model(name: str, provider: str, model_id: str, mib: int) -> str:
    return f'[models.{name}]\nprovider = "{provider}"\nid = "{model_id}"\nvram_mib = {mib}\n'


def server_url(helix: Any, provider: str) -> str:
    process = helix.provider(provider)
    assert process["state"] == "ready", process
    return f"http://127.0.0.1:{process['port']}"


def test_localai_models_load_evict_and_unload_through_its_backend_api(
    helix: Any, tmp_path: Path
) -> None:
    gpu = FakeGpuHost(tmp_path)
    library = tmp_path / "localai-models"
    library.mkdir()
    for name, mib in (("phi-3", 6000), ("mistral-7b", 6000), ("mixtral", 14000)):
        (library / f"{name}.json").write_text(json.dumps({"mib": mib, "backend": "llama-cpp"}))
    config = f"""
[resources]
vram_reserve_mib = 512
ram_reserve_mib = 0

[providers.localai]
kind = "localai"
command = ["{{python}}", "{FAKES / "localai_server.py"}", "run", "--models-path", "{library}",
           "--api-keys", "sekrit", "--fake-start-seconds", "1"]
env = {{ PYTHONPATH = "{REPO}", HELIXD_FAKE_NVML_DIR = "{gpu.dir}" }}
api_key_env = "LOCALAI_KEY"
health = {{ interval_s = 1 }}
start_seconds = 30
stop_timeout_s = 5
"""
    config += model("phi", "localai", "phi-3", 6000)
    config += model("mistral", "localai", "mistral-7b", 6000)
    config += model("mixtral", "localai", "mixtral", 14000)
    h = helix(config, extra_env={**gpu.env(), "LOCALAI_KEY": "sekrit"})
    # /readyz says 503 for a second: the provider is ready only after that.
    wait_for_sync(lambda: h.provider("localai")["state"] == "ready", 30, what="localai ready")
    server = h.provider("localai")
    environ = psutil.Process(server["pid"]).environ()
    assert environ["LOCALAI_MAX_ACTIVE_BACKENDS"] == "0"
    assert environ["LOCALAI_WATCHDOG_IDLE"] == environ["LOCALAI_WATCHDOG_BUSY"] == "false"
    base = server_url(h, "localai")
    key = {"Authorization": "Bearer sekrit"}

    def loaded() -> set[str]:
        return {m["id"] for m in get(base + "/system", key)["loaded_models"]}

    for name in ("phi", "mistral"):
        result = h.ctl("load", name, timeout=60)
        assert result.returncode == 0, result.stderr
    assert loaded() == {"phi-3", "mistral-7b"}
    # Measured from the backend process LocalAI started for the model (fake NVML).
    assert models(h)["phi"]["vram_bytes"] == 6000 * MiB
    assert gpu.used_mib() == 12000
    # 14000 MiB do not fit beside 12000 on a 24 GiB card with a 512 MiB reserve: helixd
    # shuts the least recently used backend down through LocalAI's API first.
    status, answer = chat(h, "mixtral")
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"] == "echo: hi"
    assert loaded() == {"mistral-7b", "mixtral"}
    assert states(h) == {"phi": "unloaded", "mistral": "loaded", "mixtral": "loaded"}
    assert gpu.used_mib() == 6000 + 14000
    assert h.ctl("unload", "mistral").returncode == 0
    assert loaded() == {"mixtral"}
    wait_for_sync(lambda: gpu.used_mib() == 14000, 10, what="mistral's backend memory freed")
    # A model LocalAI does not know fails the load with LocalAI's own words.
    h.write_config(config + model("ghost", "localai", "no-such-model", 1000))
    assert h.ctl("reload").returncode == 0
    result = h.ctl("load", "ghost", timeout=60)
    assert result.returncode == 1
    assert "localai has no model 'no-such-model'" in result.stderr, result.stderr
    assert "local-ai models install no-such-model" in result.stderr


def test_tabby_swaps_its_one_model_and_a_pinned_one_blocks_the_swap(
    helix: Any, tmp_path: Path
) -> None:
    gpu = FakeGpuHost(tmp_path)
    model_dir = tmp_path / "exl2"
    for folder, mib in (("Llama-3.1-8B-exl2", 5000), ("Qwen2.5-14B-exl2", 9000)):
        (model_dir / folder).mkdir(parents=True)
        (model_dir / folder / "fake.json").write_text(json.dumps({"mib": mib}))
    workdir = tmp_path / "tabbyAPI"
    workdir.mkdir()
    config = f"""
[resources]
vram_reserve_mib = 512

[providers.tabby]
kind = "tabbyapi"
command = ["{{python}}", "{FAKES / "tabby_server.py"}", "--host", "{{host}}", "--port",
           "{{port}}", "--model-dir", "{model_dir}"]
cwd = "{workdir}"
env = {{ PYTHONPATH = "{REPO}", HELIXD_FAKE_NVML_DIR = "{gpu.dir}" }}
health = {{ interval_s = 1 }}
start_seconds = 30
stop_timeout_s = 5
"""
    config += model("llama", "tabby", "Llama-3.1-8B-exl2", 5000)
    config += model("qwen", "tabby", "Qwen2.5-14B-exl2", 9000)
    h = helix(config, extra_env=gpu.env())
    wait_for_sync(lambda: h.provider("tabby")["state"] == "ready", 30, what="tabby ready")
    # TabbyAPI wrote its keys on first start; helixd reads the admin key from there.
    admin_key = (workdir / "api_tokens.yml").read_text().split("admin_key:")[1].split()[0]
    base = server_url(h, "tabby")
    pid = h.provider("tabby")["pid"]

    def current() -> str:
        return str(get(base + "/v1/model", {"Authorization": f"Bearer {admin_key}"})["id"])

    status, answer = chat(h, "llama")
    assert status == 200, answer
    assert current() == "Llama-3.1-8B-exl2"
    assert models(h)["llama"]["vram_bytes"] == 5000 * MiB  # the server process holds it
    assert json.loads((gpu.dir / "procs" / f"{pid}.json").read_text())["bytes"] == 5000 * MiB
    # The other model would fit beside it (14000 of 24064 MiB), but TabbyAPI holds one
    # model at a time: helixd unloads llama through the admin API, then loads qwen.
    status, answer = chat(h, "qwen")
    assert status == 200, answer
    assert current() == "Qwen2.5-14B-exl2"
    assert states(h) == {"llama": "unloaded", "qwen": "loaded"}
    assert "evicted for a load on gpu0" in models(h)["llama"]["message"]
    assert gpu.used_mib() == 9000
    # A pinned model is never swapped out under a request: the request is refused.
    assert h.ctl("pin", "qwen").returncode == 0
    status, answer = chat(h, "llama")
    assert status == 507, answer
    assert "holds one model at a time and qwen is pinned" in answer["error"]["message"]
    assert current() == "Qwen2.5-14B-exl2"
    # The model unloaded behind helixd's back is reported lost at the next check.
    assert h.ctl("unpin", "qwen").returncode == 0
    request = urllib.request.Request(
        base + "/v1/model/unload", method="POST", headers={"x-admin-key": admin_key}
    )
    OPENER.open(request, timeout=10).close()
    wait_for_sync(lambda: states(h)["qwen"] == "unloaded", 15, what="qwen reported lost")
    assert "no longer lists it in /v1/model" in models(h)["qwen"]["message"]
