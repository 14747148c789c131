"""The echo provider as a real process: spawned with its CLI, driven over HTTP.

Each server is started with ``python -m helixd.providers.echo`` on a free port and awaited
by polling ``/health`` against a deadline. One shared server answers the protocol tests;
the failure knobs, start-up delay and signals each get a process of their own.
The official ``openai`` and ``ollama`` clients are used when installed, skipped otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 15.0  # generous: a loaded CI box may take seconds to import aiohttp
EXIT_DEADLINE_S = 10.0
POLL_INTERVAL_S = 0.02
# No proxies: the environment may point urllib at one, and these servers are local.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class EchoProcess:
    """One echo server child process and where it listens."""

    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(*args: str, env: dict[str, str] | None = None) -> EchoProcess:
    port = free_port()
    argv = [sys.executable, "-m", "helixd.providers.echo", "--port", str(port), *args]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("HELIX_ECHO_")}
    proc = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env=child_env | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return EchoProcess(proc, port)


def is_healthy(echo: EchoProcess) -> bool:
    try:
        with OPENER.open(f"{echo.url}/health", timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(echo: EchoProcess, deadline_s: float = START_DEADLINE_S) -> None:
    """Poll /health until it answers 200; fail with the child's output if it dies or stalls."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if echo.proc.poll() is not None:
            _, err = echo.proc.communicate()
            pytest.fail(f"echo provider exited with {echo.proc.returncode}: {err}")
        if is_healthy(echo):
            return
        time.sleep(POLL_INTERVAL_S)  # poll interval; readiness is decided by /health
    pytest.fail(f"echo provider not healthy within {deadline_s} s")


def stop(echo: EchoProcess) -> None:
    if echo.proc.poll() is None:
        echo.proc.send_signal(signal.SIGTERM)
        try:
            echo.proc.wait(timeout=EXIT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            echo.proc.kill()
            echo.proc.wait()
    for pipe in (echo.proc.stdout, echo.proc.stderr):
        if pipe is not None:
            pipe.close()


@contextmanager
def running(*args: str, env: dict[str, str] | None = None) -> Iterator[EchoProcess]:
    echo = spawn(*args, env=env)
    try:
        wait_healthy(echo)
        yield echo
    finally:
        stop(echo)


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoProcess]:
    with running("--model", "echo", "--model", "tiny") as server:
        yield server


async def post(url: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return r.status, await r.json(content_type=None)


async def http_chunks(url: str, body: Any) -> tuple[str, list[bytes]]:
    """The response's Content-Type and its body split at HTTP chunk boundaries."""
    chunks: list[bytes] = []
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 200
        current = b""
        while True:
            data, end_of_chunk = await response.content.readchunk()
            current += data
            if end_of_chunk or not data:
                if current:
                    chunks.append(current)
                current = b""
            if not data and not end_of_chunk:
                break
        return response.headers["Content-Type"], chunks


def sse_events(body: bytes) -> list[str]:
    """The data of each SSE event in ``body``."""
    events = [e for e in body.decode().split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), events
    return [e.removeprefix("data: ") for e in events]


CHAT = {"model": "echo", "messages": [{"role": "system", "content": "be brief"}]}
CHAT["messages"] = [*CHAT["messages"], {"role": "user", "content": "hello  big world"}]
REPLY = "echo: hello  big world"


# -- start-up and plain endpoints ------------------------------------------------------------


def test_announces_where_it_listens(echo: EchoProcess) -> None:
    assert echo.proc.stdout is not None
    line = echo.proc.stdout.readline().strip()
    assert line == f"echo provider listening on {echo.url} (models: echo, tiny)"


async def test_health_root_and_version(echo: EchoProcess) -> None:
    assert await get(f"{echo.url}/health") == (200, {"status": "ok"})
    async with aiohttp.ClientSession() as session, session.get(f"{echo.url}/") as response:
        assert (response.status, await response.text()) == (200, "Echo provider is running")
    status, body = await get(f"{echo.url}/api/version")
    assert status == 200 and body["version"].endswith("-echo")


async def test_lists_models_in_openai_and_ollama_shapes(echo: EchoProcess) -> None:
    status, body = await get(f"{echo.url}/v1/models")
    assert status == 200 and body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
        ("echo", "model", "helixd-echo"),
        ("tiny", "model", "helixd-echo"),
    ]
    status, body = await get(f"{echo.url}/api/tags")
    assert status == 200 and [m["name"] for m in body["models"]] == ["echo", "tiny"]
    for model in body["models"]:
        assert {"name", "model", "modified_at", "size", "digest", "details"} <= model.keys()
        assert {"format", "family", "parameter_size", "quantization_level"} <= model[
            "details"
        ].keys()


# -- OpenAI --------------------------------------------------------------------------------


async def test_chat_completion_echoes_the_last_user_message(echo: EchoProcess) -> None:
    status, body = await post(f"{echo.url}/v1/chat/completions", CHAT)
    assert status == 200 and body["object"] == "chat.completion" and body["model"] == "echo"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": REPLY}
    assert choice["finish_reason"] == "stop"
    # Whitespace tokens: "echo: ", "hello  ", "big ", "world"; the prompt has 5 words.
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


async def test_chat_stream_sends_one_sse_event_per_token(echo: EchoProcess) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    content_type, chunks = await http_chunks(f"{echo.url}/v1/chat/completions", body)
    assert content_type.startswith("text/event-stream")
    events = [sse_events(chunk) for chunk in chunks]
    assert all(len(e) == 1 for e in events), "each HTTP chunk should carry exactly one event"
    data = [e[0] for e in events]
    assert data[-1] == "[DONE]"
    objects = [json.loads(d) for d in data[:-1]]
    assert {o["object"] for o in objects} == {"chat.completion.chunk"}
    assert len({o["id"] for o in objects}) == 1
    tokens, finish, usage = objects[:-2], objects[-2], objects[-1]
    assert [t["choices"][0]["delta"]["content"] for t in tokens] == [
        "echo: ",
        "hello  ",
        "big ",
        "world",
    ]
    assert tokens[0]["choices"][0]["delta"]["role"] == "assistant"
    assert finish["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4


async def test_text_completion_whole_and_streamed(echo: EchoProcess) -> None:
    body = {"model": "tiny", "prompt": "say this"}
    status, whole = await post(f"{echo.url}/v1/completions", body)
    assert status == 200 and whole["object"] == "text_completion"
    assert whole["choices"][0]["text"] == "echo: say this"
    assert whole["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    _, chunks = await http_chunks(f"{echo.url}/v1/completions", {**body, "stream": True})
    data = [sse_events(chunk)[0] for chunk in chunks]
    assert data[-1] == "[DONE]"
    choices = [json.loads(d)["choices"][0] for d in data[:-1]]
    assert "".join(c["text"] for c in choices) == "echo: say this"
    assert [c["finish_reason"] for c in choices] == [None, None, None, "stop"]


async def test_embeddings_are_deterministic_unit_vectors(echo: EchoProcess) -> None:
    url = f"{echo.url}/v1/embeddings"
    status, first = await post(url, {"model": "echo", "input": ["alpha", "beta"]})
    assert status == 200 and first["object"] == "list"
    _, again = await post(url, {"model": "echo", "input": "alpha"})
    vectors = [d["embedding"] for d in first["data"]]
    assert [d["index"] for d in first["data"]] == [0, 1]
    assert all(len(v) == 8 for v in vectors) and vectors[0] != vectors[1]
    assert again["data"][0]["embedding"] == vectors[0]
    assert math.isclose(math.sqrt(sum(x * x for x in vectors[0])), 1.0, rel_tol=1e-6)
    _, packed = await post(url, {"model": "echo", "input": "alpha", "encoding_format": "base64"})
    decoded = struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"]))
    assert list(decoded) == vectors[0]
    _, wide = await post(url, {"model": "echo", "input": "alpha", "dimensions": 20})
    assert len(wide["data"][0]["embedding"]) == 20


# -- Ollama --------------------------------------------------------------------------------


async def ndjson_lines(url: str, body: Any) -> list[dict[str, Any]]:
    content_type, chunks = await http_chunks(url, body)
    assert content_type.startswith("application/x-ndjson")
    assert all(chunk.count(b"\n") == 1 and chunk.endswith(b"\n") for chunk in chunks)
    return [json.loads(chunk) for chunk in chunks]


async def test_ollama_generate_streams_ndjson_by_default(echo: EchoProcess) -> None:
    lines = await ndjson_lines(f"{echo.url}/api/generate", {"model": "echo", "prompt": "a b c"})
    assert [line["done"] for line in lines] == [False] * 4 + [True]
    assert "".join(line["response"] for line in lines) == "echo: a b c"
    last = lines[-1]
    assert (
        last["done_reason"] == "stop" and last["eval_count"] == 4 and last["prompt_eval_count"] == 3
    )
    assert {"total_duration", "load_duration", "eval_duration", "created_at"} <= last.keys()


async def test_ollama_chat_stream_and_single_object(echo: EchoProcess) -> None:
    body = {"model": "echo", "messages": CHAT["messages"]}
    lines = await ndjson_lines(f"{echo.url}/api/chat", body)
    assert "".join(line["message"]["content"] for line in lines) == REPLY
    assert {line["message"]["role"] for line in lines} == {"assistant"}
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    status, whole = await post(f"{echo.url}/api/chat", {**body, "stream": False})
    assert status == 200 and whole["message"]["content"] == REPLY and whole["done"] is True
    status, whole = await post(
        f"{echo.url}/api/generate", {"model": "echo", "prompt": "x", "stream": False}
    )
    assert status == 200 and whole["response"] == "echo: x" and whole["eval_count"] == 2


async def test_ollama_load_ps_and_unload(echo: EchoProcess) -> None:
    # "tiny" is only touched here, so /api/ps reflects exactly these calls.
    url = f"{echo.url}/api/generate"
    status, loaded = await post(url, {"model": "tiny", "keep_alive": -1})
    assert status == 200 and (loaded["done"], loaded["done_reason"]) == (True, "load")
    _, ps = await get(f"{echo.url}/api/ps")
    (tiny,) = [m for m in ps["models"] if m["name"] == "tiny"]
    assert tiny["size_vram"] == 0 and tiny["context_length"] > 0
    assert tiny["expires_at"] > "2200" and {"size", "digest", "details", "model"} <= tiny.keys()
    status, unloaded = await post(url, {"model": "tiny", "keep_alive": 0})
    assert status == 200 and unloaded["done_reason"] == "unload"
    _, ps = await get(f"{echo.url}/api/ps")
    assert "tiny" not in [m["name"] for m in ps["models"]]
    status, chat_load = await post(f"{echo.url}/api/chat", {"model": "tiny", "messages": []})
    assert status == 200 and chat_load["done_reason"] == "load"
    await post(f"{echo.url}/api/chat", {"model": "tiny", "keep_alive": "0s"})


# -- errors --------------------------------------------------------------------------------


async def test_unknown_model_is_404_in_each_api_shape(echo: EchoProcess) -> None:
    status, body = await post(f"{echo.url}/v1/chat/completions", {**CHAT, "model": "x"})
    assert status == 404
    assert body == {
        "error": {
            "message": "model 'x' not found; this echo server serves: echo, tiny",
            "type": "invalid_request_error",
            "code": "model_not_found",
        }
    }
    for path in ("/api/generate", "/api/chat"):
        assert await post(f"{echo.url}{path}", {"model": "x", "prompt": "p"}) == (
            404,
            {"error": "model 'x' not found"},
        )
    assert (await post(f"{echo.url}/v1/embeddings", {"model": "x", "input": "p"}))[0] == 404


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/v1/chat/completions", b"{not json", "JSON"),
        ("/v1/chat/completions", b"", "JSON"),
        ("/v1/chat/completions", b"[1, 2]", "object"),
        ("/v1/chat/completions", b'{"model": "echo"}', "'messages'"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a"}]}', "'model'"),
        ("/v1/chat/completions", b'{"model": "echo", "messages": []}', "'messages'"),
        ("/v1/chat/completions", b'{"model": "echo", "messages": ["a"]}', "'messages'"),
        ("/v1/completions", b'{"model": "echo"}', "'prompt'"),
        ("/v1/completions", b'{"model": "echo", "prompt": 7}', "'prompt'"),
        ("/v1/embeddings", b'{"model": "echo"}', "'input'"),
        ("/api/generate", b'{"prompt": "a"}', "'model'"),
        ("/api/generate", b'{"model": "echo", "prompt": "a", "keep_alive": "soon"}', "keep_alive"),
        ("/api/chat", b"{oops", "JSON"),
        ("/api/chat", b'{"model": "echo", "messages": "hi"}', "'messages'"),
    ],
)
async def test_bad_input_is_400_naming_the_problem(
    echo: EchoProcess, path: str, body: bytes, named: str
) -> None:
    status, answer = await post(f"{echo.url}{path}", raw=body)
    assert status == 400
    message = answer["error"] if path.startswith("/api/") else answer["error"]["message"]
    assert named in message and "Traceback" not in message


async def test_fail_after_tokens_ends_streams_with_an_error_event() -> None:
    with running("--fail-after-tokens", "2") as echo:
        _, chunks = await http_chunks(f"{echo.url}/v1/chat/completions", {**CHAT, "stream": True})
        data = [json.loads(sse_events(chunk)[0]) for chunk in chunks]
        assert [d["choices"][0]["delta"]["content"] for d in data[:2]] == ["echo: ", "hello  "]
        assert len(data) == 3 and data[2]["error"]["code"] == "injected_failure"
        lines = await ndjson_lines(f"{echo.url}/api/generate", {"model": "echo", "prompt": "a b c"})
        assert [line.get("response") for line in lines[:2]] == ["echo: ", "a "]
        assert len(lines) == 3 and "injected failure" in lines[2]["error"]
        # Short replies finish normally, and whole answers are not affected.
        _, chunks = await http_chunks(
            f"{echo.url}/v1/completions", {"model": "echo", "prompt": "", "stream": True}
        )
        assert sse_events(chunks[-1]) == ["[DONE]"]
        assert (await post(f"{echo.url}/v1/chat/completions", CHAT))[0] == 200


async def test_fail_rate_one_answers_500_before_any_byte() -> None:
    with running("--fail-rate", "1.0") as echo:
        for _ in range(5):
            status, body = await post(f"{echo.url}/v1/chat/completions", {**CHAT, "stream": True})
            assert status == 500 and body["error"]["type"] == "server_error"
        status, body = await post(
            f"{echo.url}/api/chat", {"model": "echo", "messages": CHAT["messages"]}
        )
        assert status == 500 and "injected failure" in body["error"]
        # Not completions: health, listings, loads and embeddings stay up.
        assert (await get(f"{echo.url}/health"))[0] == 200
        assert (await post(f"{echo.url}/api/generate", {"model": "echo"}))[0] == 200
        assert (await post(f"{echo.url}/v1/embeddings", {"model": "echo", "input": "a"}))[0] == 200


async def test_fail_rate_pattern_is_fixed_by_the_seed() -> None:
    async def pattern(echo: EchoProcess) -> list[int]:
        body = {"model": "echo", "prompt": "p"}
        return [(await post(f"{echo.url}/v1/completions", body))[0] for _ in range(30)]

    with (
        running("--fail-rate", "0.5", "--seed", "7") as one,
        running("--fail-rate", "0.5", "--seed", "7") as two,
    ):
        first, second = await pattern(one), await pattern(two)
    assert first == second and set(first) == {200, 500}


async def test_environment_sets_knobs_and_flags_win() -> None:
    env = {"HELIX_ECHO_FAIL_RATE": "1", "HELIX_ECHO_FAIL_AFTER_TOKENS": "1"}
    with running("--fail-rate", "0", env=env) as echo:
        assert (await post(f"{echo.url}/v1/chat/completions", CHAT))[0] == 200
        lines = await ndjson_lines(f"{echo.url}/api/generate", {"model": "echo", "prompt": "a b"})
        assert len(lines) == 2 and "error" in lines[1]


def test_rejects_bad_knobs_with_usage_error() -> None:
    module = [sys.executable, "-m", "helixd.providers.echo"]
    bad = subprocess.run(
        [*module, "--fail-rate", "2"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=30
    )
    assert bad.returncode == 2 and "--fail-rate" in bad.stderr
    env = os.environ | {"HELIX_ECHO_TOKEN_DELAY": "slow"}
    bad = subprocess.run(module, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=30)
    assert bad.returncode == 2 and "HELIX_ECHO_TOKEN_DELAY" in bad.stderr


# -- lifecycle -----------------------------------------------------------------------------


def test_startup_delay_keeps_the_port_closed_until_it_passed() -> None:
    delay = 1.0
    started = time.monotonic()
    echo = spawn("--startup-delay", str(delay))
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", echo.port), timeout=1.0).close()
        wait_healthy(echo)
        # A lower bound only: the server cannot have listened before the delay passed.
        assert time.monotonic() - started >= delay
        assert echo.proc.stdout is not None and "listening" in echo.proc.stdout.readline()
    finally:
        stop(echo)
    assert echo.proc.returncode == 0


def test_sigterm_during_startup_delay_exits_zero() -> None:
    echo = spawn("--startup-delay", "30")
    # The notice on stderr comes once the signal handlers are in place; before that,
    # SIGTERM kills an interpreter still importing, as it would any process.
    assert echo.proc.stderr is not None
    assert "--startup-delay" in echo.proc.stderr.readline()
    echo.proc.send_signal(signal.SIGTERM)
    assert echo.proc.wait(timeout=EXIT_DEADLINE_S) == 0
    stop(echo)


async def test_sigterm_exits_zero_even_mid_stream() -> None:
    with running("--token-delay", "0.2") as echo:
        async with aiohttp.ClientSession() as session:
            body = {"model": "echo", "prompt": " ".join(["word"] * 50)}
            async with session.post(f"{echo.url}/api/generate", json=body) as response:
                first = await response.content.readline()
                assert json.loads(first)["done"] is False
                echo.proc.send_signal(signal.SIGTERM)
                returncode = await asyncio.to_thread(echo.proc.wait, EXIT_DEADLINE_S)
        assert returncode == 0


def test_sigint_exits_zero() -> None:
    with running() as echo:
        echo.proc.send_signal(signal.SIGINT)
        assert echo.proc.wait(timeout=EXIT_DEADLINE_S) == 0
        assert echo.proc.stderr is not None and "Traceback" not in echo.proc.stderr.read()


# -- official clients (skipped when not installed) -----------------------------------------


def test_official_openai_client(echo: EchoProcess) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{echo.url}/v1", api_key="unused", max_retries=0, timeout=10)
    assert [m.id for m in client.models.list()] == ["echo", "tiny"]
    reply = client.chat.completions.create(model="echo", messages=CHAT["messages"])
    assert reply.choices[0].message.content == REPLY and reply.usage is not None
    stream = client.chat.completions.create(model="echo", messages=CHAT["messages"], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY
    completion = client.completions.create(model="tiny", prompt="hi there")
    assert completion.choices[0].text == "echo: hi there"
    # The client asks for base64 by default and decodes it; the numbers must match floats.
    packed = client.embeddings.create(model="echo", input="alpha").data[0].embedding
    plain = client.embeddings.create(model="echo", input="alpha", encoding_format="float")
    assert packed == plain.data[0].embedding and len(packed) == 8
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="x", messages=CHAT["messages"])


def test_official_openai_client_sees_mid_stream_errors() -> None:
    openai = pytest.importorskip("openai")
    with running("--fail-after-tokens", "1") as echo:
        client = openai.OpenAI(
            base_url=f"{echo.url}/v1", api_key="unused", max_retries=0, timeout=10
        )
        stream = client.chat.completions.create(
            model="echo", messages=CHAT["messages"], stream=True
        )
        with pytest.raises(openai.APIError, match="injected failure"):
            list(stream)


def test_official_ollama_client(echo: EchoProcess) -> None:
    ollama = pytest.importorskip("ollama")
    client = ollama.Client(host=echo.url, timeout=10)
    assert [m.model for m in client.list().models] == ["echo", "tiny"]
    assert client.chat(model="echo", messages=CHAT["messages"]).message.content == REPLY
    parts = client.chat(model="echo", messages=CHAT["messages"], stream=True)
    assert "".join(p.message.content or "" for p in parts) == REPLY
    assert client.generate(model="echo", prompt="a b").response == "echo: a b"
    assert client.generate(model="echo", keep_alive=-1).done_reason == "load"
    assert "echo" in [m.model for m in client.ps().models]
    with pytest.raises(ollama.ResponseError) as failure:
        client.generate(model="x", prompt="a")
    assert failure.value.status_code == 404
