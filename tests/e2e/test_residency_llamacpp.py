"""Residency with a real provider: llama-cpp-python's server on tiny generated models.

The models are random-weight llama GGUFs written by ``tests/fakes/tiny_gguf.py``; the
server is the real ``python -m llama_cpp.server``, started per model by helixd from the
provider's template. Memory is measured from the real process (RAM-only here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import import_real_provider, wait_for_sync
from tests.e2e.views import models

import_real_provider("llama_cpp.server.app")
openai = import_real_provider("openai")

TINY_GGUF = Path(__file__).resolve().parents[1] / "fakes" / "tiny_gguf.py"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    paths = (folder / "tiny-a.gguf", folder / "tiny-b.gguf")
    for path in paths:
        subprocess.run([sys.executable, str(TINY_GGUF), str(path)], check=True, timeout=60)
    return paths


def config(a: Path, b: Path) -> str:
    return f"""
[resources]
gpus = "none"
max_loaded_models = 1

[providers.llama]
kind = "openai"
command = ["{{python}}", "-m", "llama_cpp.server", "--model", "{{model_path}}",
           "--host", "{{host}}", "--port", "{{port}}", "--n_ctx", "{{ctx}}"]
health = {{ path = "/v1/models", interval_s = 2 }}
start_seconds = 120

[models.tiny-a]
provider = "llama"
path = "{a}"
ctx = 256

[models.tiny-b]
provider = "llama"
path = "{b}"
ctx = 256
"""


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_real_llama_cpp_server_is_loaded_measured_evicted_and_unloaded(
    helix: Any, tiny_models: tuple[Path, Path]
) -> None:
    h = helix(config(*tiny_models))
    before = models(h)["tiny-a"]
    assert before["state"] == "unloaded"
    assert before["memory_source"] == "estimated"  # from the GGUF header
    assert "GGUF llama" in before["memory_detail"]
    devices = json.loads(h.ctl("--json", "models").stdout)["devices"]
    assert devices["mode"] == "ram-only" and 'resources.gpus = "none"' in devices["note"]

    loaded = h.ctl("load", "tiny-a", timeout=180)
    assert loaded.returncode == 0, loaded.stderr + h.stderr()[-3000:]
    assert loaded.stdout.strip() == "tiny-a: loaded on ram"
    a = models(h)["tiny-a"]
    pid = a["process"]["pid"]
    assert a["memory_source"] == "measured"
    # Measured from the real process at load: the same order as what psutil sees now.
    assert 0.5 < a["ram_bytes"] / tree_rss(pid) < 2.0

    client = openai.OpenAI(base_url=a["upstream"] + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model="tiny-a", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.usage is not None and answer.usage.completion_tokens >= 1

    # The same model through helixd's endpoint, streaming, with the official client.
    via_helixd = openai.OpenAI(base_url=h.proxy_url + "/v1", api_key="unused", max_retries=0)
    chunks = list(
        via_helixd.chat.completions.create(
            model="tiny-a",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
        )
    )
    assert chunks and chunks[0].choices is not None

    # max_loaded_models = 1: loading b evicts a, whose server process goes away.
    loaded = h.ctl("load", "tiny-b", timeout=180)
    assert loaded.returncode == 0, loaded.stderr
    after = models(h)
    assert after["tiny-a"]["state"] == "unloaded"
    assert after["tiny-a"]["message"] == "evicted for a load on ram"
    assert gone(pid)
    b_pid = after["tiny-b"]["process"]["pid"]
    unloaded = h.ctl("unload", "tiny-b")
    assert unloaded.returncode == 0, unloaded.stderr
    assert models(h)["tiny-b"]["state"] == "unloaded"
    wait_for_sync(lambda: gone(b_pid), what="tiny-b's server to exit")
    # The measured size is remembered for the next load with the same parameters.
    h.stop()
    h.start()
    assert models(h)["tiny-a"]["memory_source"] == "measured"


def test_a_model_the_server_cannot_load_fails_with_its_log(
    helix: Any, tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 8)  # a header and no more
    h = helix(config(tiny_models[0], broken))
    result = h.ctl("load", "tiny-b", timeout=180)
    assert result.returncode == 1
    assert "tiny-b failed to load: llama:tiny-b exited with code 1 while loading" in result.stderr
    assert "last log lines:" in result.stderr
    m = models(h)["tiny-b"]
    assert m["state"] == "failed"
    # helixd's own reading of the header already said why: nothing to estimate from.
    assert m["memory_source"] == "unknown"
    assert m["memory_detail"].startswith(f"no estimate: {broken}: truncated GGUF header")
    logs = h.ctl("logs", "tiny-b")  # the model's own process log, by the model's name
    assert logs.returncode == 0, logs.stderr
    assert "llama_model_load: error loading model" in logs.stdout
