"""kind = "llamacpp" with llama-cpp-python's server, as the README lists it, and no health key.

That server has no ``/health`` (it answers 404 there); the kind's probe falls back to
``/v1/models``, which it and llama.cpp's ``llama-server`` both answer. The server is the
real ``python -m llama_cpp.server`` on a tiny random-weight GGUF (``tests/fakes/tiny_gguf.py``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import import_real_provider
from tests.e2e.views import models

import_real_provider("llama_cpp.server.app")
openai = import_real_provider("openai")

TINY_GGUF = Path(__file__).resolve().parents[1] / "fakes" / "tiny_gguf.py"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    subprocess.run([sys.executable, str(TINY_GGUF), str(path)], check=True, timeout=60)
    return path


def test_llama_cpp_python_server_on_kind_llamacpp_loads_without_a_health_key(
    helix: Any, tiny_model: Path
) -> None:
    h = helix(
        f"""
[resources]
gpus = "none"

[providers.llama]
kind = "llamacpp"
command = ["{{python}}", "-m", "llama_cpp.server", "--model", "{{model_path}}",
           "--host", "{{host}}", "--port", "{{port}}", "--n_ctx", "{{ctx}}"]
start_seconds = 120

[models.tiny]
provider = "llama"
path = "{tiny_model}"
ctx = 256
"""
    )
    loaded = h.ctl("load", "tiny", timeout=180)
    assert loaded.returncode == 0, loaded.stderr + h.stderr()[-3000:]
    assert loaded.stdout.strip() == "tiny: loaded on ram"
    logs = h.ctl("logs", "tiny", "-n", "200").stdout
    assert "GET /health answered HTTP 404: this server has no /health; " in logs
    assert "probing GET /v1/models instead" in logs

    client = openai.OpenAI(base_url=h.proxy_url + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.usage is not None and answer.usage.completion_tokens >= 1
    assert models(h)["tiny"]["state"] == "loaded"
