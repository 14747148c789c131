"""The tiny generated GGUF model is real: llama.cpp loads it, generates, and serves it.

llama.cpp runs in child processes only, never inside pytest: it answers a model it dislikes
with ``GGML_ASSERT`` and ``abort()``, which would take the whole test run down with it.
Skipped when llama-cpp-python is not installed; CI installs it with the ``[server]`` extra.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from helixd.providers.estimate import MIB, estimate_gguf, format_bytes
from tests.conftest import import_real_provider

import_real_provider("llama_cpp")
import_real_provider("gguf")

from tests.fakes import tiny_gguf  # noqa: E402 (after the skips: it imports gguf)

TINY_GGUF = Path(tiny_gguf.__file__)
N_CTX = 256
SERVER_START_DEADLINE_S = 120.0  # importing fastapi/uvicorn/llama_cpp on a busy CI box
STOP_DEADLINE_S = 10.0
# No proxies: the environment may point urllib at one, and this server is local.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

GENERATE = """
import json, sys
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), verbose=False)
# Random weights may well pick </s> first; banning it makes the 4 tokens certain.
out = llm.create_completion("hello world", max_tokens=4, logit_bias={llm.token_eos(): -1e9})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, written through the script's command line."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf"
    subprocess.run([sys.executable, str(TINY_GGUF), str(path)], check=True, timeout=60)
    return path


def test_estimate_of_the_tiny_model(model: Path) -> None:
    est = estimate_gguf(model, ctx=N_CTX)
    n_vocab = len(tiny_gguf.vocabulary()[0])
    e, ff, kv = tiny_gguf.N_EMBD, tiny_gguf.N_FF, tiny_gguf.N_HEAD_KV * tiny_gguf.HEAD_DIM
    per_layer = 2 * e + 2 * e * e + 2 * kv * e + 3 * e * ff  # norms, q/o, k/v, ffn
    params = 2 * n_vocab * e + e + tiny_gguf.N_LAYER * per_layer
    assert est.weights_bytes == params * 4  # all F32
    # ctx * layers * KV heads * (k + v head dims) * 2 bytes of f16
    assert est.kv_cache_bytes == N_CTX * tiny_gguf.N_LAYER * tiny_gguf.N_HEAD_KV * 32 * 2
    assert est.overhead_bytes == int(est.weights_bytes * 0.05) + 256 * MIB
    assert "GGUF llama" in est.detail
    assert "ctx 256, 2 layers, 2 KV heads" in est.detail


def test_llama_cpp_loads_and_generates(model: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", GENERATE, str(model), str(N_CTX)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"llama.cpp refused the model:\n{done.stderr[-4000:]}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["usage"]["completion_tokens"] == 4
    assert out["choices"][0]["finish_reason"] == "length"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with OPENER.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it outstays the deadline."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def server(model: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    import_real_provider("llama_cpp.server.app")
    port = free_port()
    log = tmp_path / "llama-server.log"
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        stop(proc)


def test_llama_cpp_server_serves_the_tiny_model(
    server: tuple[subprocess.Popen[bytes], str, Path], model: Path
) -> None:
    proc, url, log = server
    deadline = time.monotonic() + SERVER_START_DEADLINE_S
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            status, models = http(f"{url}/v1/models")
            break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not up after {SERVER_START_DEADLINE_S} s")
            time.sleep(0.1)
    assert status == 200
    assert [m["id"] for m in models["data"]] == [str(model)]

    eos = str(tiny_gguf.EOS)  # banned, as in GENERATE, so exactly 4 tokens come
    chat = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "logit_bias": {eos: -100},
    }
    status, answer = http(f"{url}/v1/chat/completions", chat)
    assert status == 200, answer
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["completion_tokens"] == 4
    assert answer["choices"][0]["finish_reason"] == "length"

    # Not asserted (it depends on the build: a CUDA build maps its runtime too), but shown
    # next to the estimate so the overhead rule of thumb can be judged against reality.
    rss = psutil.Process(proc.pid).memory_info().rss
    est = estimate_gguf(model, ctx=N_CTX)
    print(f"\nllama_cpp.server RSS {format_bytes(rss)} ({rss} B); estimate {est.detail}")
