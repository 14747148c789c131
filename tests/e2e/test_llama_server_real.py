"""helixd with llama.cpp's own ``llama-server`` (kind ``llamacpp``), the real C++ server.

The binary is built once from the llama.cpp tree vendored in the pinned llama-cpp-python
sdist (``make llama-server``; see ``tests/e2e/llama_server_bin.py``); the models are
random-weight llama GGUFs written by ``tests/fakes/tiny_gguf.py``. Everything goes
through the real helixd and the real helixctl, RAM-only (the build is CPU-only), with
one thread per server (``-t 1``) on a shared test machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from helixd.providers.per_model import telling_line
from tests.conftest import import_real_provider, wait_for_sync
from tests.e2e.conftest import BIN
from tests.e2e.llama_server_bin import llama_server_binary
from tests.e2e.views import models
from tests.fakes.tiny_gguf import write_tiny_llama

openai = import_real_provider("openai")
ollama = import_real_provider("ollama")

# llama-server's own parameter: random weights say </s> whenever sampling lands on it.
NO_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def llama_server() -> Path:
    return llama_server_binary()


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    paths = {name: folder / f"{name}.gguf" for name in ("a", "b", "c")}
    for seed, path in enumerate(paths.values()):
        write_tiny_llama(path, seed=seed)
    # A context long enough for a stream of thousands of tokens (llama-server caps each
    # slot's context at the model's training context).
    paths["long"] = write_tiny_llama(folder / "long.gguf", n_ctx_train=32768)
    return paths


def config(binary: Path, models: dict[str, Path], extra: str = "", **model_keys: str) -> str:
    text = f"""
[resources]
gpus = "none"
{extra}

[providers.llama]
kind = "llamacpp"
command = ["{binary}", "-m", "{{model_path}}", "--host", "{{host}}", "--port", "{{port}}",
           "-c", "{{ctx}}", "-t", "1"]
start_seconds = 60
"""
    for name, path in models.items():
        ctx = 8192 if "long" in path.name else 256
        text += f'\n[models.{name}]\nprovider = "llama"\npath = "{path}"\nctx = {ctx}\n'
        text += model_keys.get(name, "")
    return text


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int | None, Any]:
    """``(status, JSON or text)`` of a GET, any status; None when nothing answers."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    except urllib.error.URLError as error:
        return None, str(error.reason)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def server_key(pid: int) -> dict[str, str]:
    """The key helixd started the model's server with, read as its own user can (from
    the process's environment), to look at the server's other routes."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    key = next(e for e in environ if e.startswith(b"LLAMA_API_KEY=")).split(b"=", 1)[1]
    return {"Authorization": f"Bearer {key.decode()}"}


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_loaded_on_demand_measured_and_served_to_the_openai_and_ollama_clients(
    helix: Any, llama_server: Path, gguf: dict[str, Path]
) -> None:
    h = helix(config(llama_server, {"tiny": gguf["a"]}))
    assert models(h)["tiny"]["state"] == "unloaded"

    # The first request loads the model through the endpoint (no helixctl load).
    client = openai.OpenAI(base_url=h.proxy_url + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        extra_body=NO_EOS,
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    m = models(h)["tiny"]
    assert m["state"] == "loaded" and m["device"] == "ram"
    pid = m["process"]["pid"]
    assert m["memory_source"] == "measured" and m["ram_bytes"] > 0
    assert 0.5 < m["ram_bytes"] / tree_rss(pid) < 2.0  # the same order as psutil sees now
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
            extra_body=NO_EOS,
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    # llama-server ends the connection after a streamed answer without saying so; helixd
    # must not send the next request down it (a failed attempt, or a 502).
    assert asyncio.run(_streams_and_answers(h.proxy_url, "tiny", clients=8, each=10)) == [200] * 80
    assert "its server did not answer" not in h.stderr()

    c = ollama.Client(host=h.proxy_url)
    chat = c.chat(
        model="tiny", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3}
    )
    assert chat.done and chat.message.role == "assistant"
    streamed = list(
        c.chat(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            options={"num_predict": 3},
            stream=True,
        )
    )
    assert streamed[-1].done
    assert c.generate(model="tiny", prompt="hi", options={"num_predict": 3}).done

    # The model's own server, as helixd's kind expects it (probed on /health).
    upstream = m["upstream"]
    assert get(upstream + "/health") == (200, {"status": "ok"})
    key = server_key(pid)
    status, slots = get(upstream + "/slots", key)
    assert status == 200 and len(slots) == 4 and not any(s["is_processing"] for s in slots)
    status, props = get(upstream + "/props", key)
    assert status == 200 and props["total_slots"] == 4 and props["is_sleeping"] is False
    assert props["default_generation_settings"]["n_ctx"] == 256
    status, metrics = get(upstream + "/metrics", key)
    assert status == 501 and "--metrics" in metrics["error"]["message"]

    # Stopping helixd stops the model's server (SIGTERM: llama-server exits 0).
    assert h.stop() == 0
    assert gone(pid)
    assert "llama_server: model loaded" in (h.root / "logs" / "llama:tiny.log").read_text()


async def _streams_and_answers(url: str, model: str, clients: int, each: int) -> list[int]:
    """Statuses of ``clients`` concurrent clients each asking ``each`` times, streamed and
    not in turn, through one connection pool (as helixd's own is towards the model)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    statuses: list[int] = []
    async with aiohttp.ClientSession(trust_env=False) as session:

        async def client(index: int) -> None:
            for i in range(each):
                stream = (index + i) % 2 == 0
                payload = {**body, "stream": stream}
                async with session.post(url + "/v1/chat/completions", json=payload) as answer:
                    await answer.read()
                    statuses.append(answer.status)

        await asyncio.gather(*(client(i) for i in range(clients)))
    return statuses


def test_lru_eviction_a_pin_and_keep_alive(
    helix: Any, llama_server: Path, gguf: dict[str, Path]
) -> None:
    three = {"a": gguf["a"], "b": gguf["b"], "c": gguf["c"]}
    h = helix(
        config(llama_server, three, "max_loaded_models = 2", c='keep_alive = "2s"\n'),
    )
    pinned = h.ctl("pin", "a", timeout=90)
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.strip() == "a: loaded on ram, pinned"
    assert h.ctl("load", "b", timeout=90).returncode == 0
    b_pid = models(h)["b"]["process"]["pid"]
    loaded = h.ctl("load", "c", timeout=90)
    assert loaded.returncode == 0, loaded.stderr
    after = models(h)
    # Two at most: b, the least recently used that is not pinned, made room for c.
    assert after["b"]["state"] == "unloaded"
    assert after["b"]["message"] == "evicted for a load on ram"
    assert after["a"]["state"] == "loaded" and after["c"]["state"] == "loaded"
    wait_for_sync(lambda: gone(b_pid), what="b's llama-server to exit")
    c_pid = after["c"]["process"]["pid"]
    # c's keep_alive runs out; the pinned a never leaves.
    wait_for_sync(lambda: models(h)["c"]["state"] == "unloaded", timeout=20, what="c's keep_alive")
    assert models(h)["c"]["message"] == "idle for 2 s (keep_alive)"
    wait_for_sync(lambda: gone(c_pid), what="c's llama-server to exit")
    assert models(h)["a"]["state"] == "loaded"
    unloaded = h.ctl("unload", "a")
    assert unloaded.returncode == 1 and "unpin it first" in unloaded.stderr


def test_the_loading_phase_answers_503_and_helixd_waits_it_out(
    helix: Any, llama_server: Path, gguf: dict[str, Path], tmp_path: Path
) -> None:
    # The model's path is a link helixd reads a real GGUF header through at start; for
    # the load it is pointed at a FIFO, where llama-server's first open blocks with its
    # HTTP server already up — a load that lasts until the test lets it go on.
    link, fifo = tmp_path / "slow.gguf", tmp_path / "load.fifo"
    link.symlink_to(gguf["a"])
    os.mkfifo(fifo)
    h = helix(config(llama_server, {"slow": link}))
    assert models(h)["slow"]["memory_source"] == "estimated"
    _point(link, fifo)
    loading = subprocess.Popen(
        [str(BIN / "helixctl"), "load", "slow", "--timeout", "120"],
        env=h.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_sync(lambda: models(h)["slow"]["state"] == "loading", what="slow to be loading")
    port = models(h)["slow"]["process"]["port"]
    upstream = f"http://127.0.0.1:{port}"
    wait_for_sync(lambda: get(upstream + "/health")[0] == 503, what="llama-server to listen")
    loading_model = {
        "error": {"message": "Loading model", "type": "unavailable_error", "code": 503}
    }
    for path in ("/health", "/v1/models", "/props", "/slots"):
        assert get(upstream + path) == (503, loading_model), path
    # A request that arrives now waits for the load, however long it takes.
    answers: list[int] = []
    waiting = threading.Thread(target=lambda: answers.append(_chat(h, "slow")))
    waiting.start()
    wait_for_sync(
        lambda: (m := models(h)["slow"])["queued"] + m["in_flight"] >= 1,
        what="the request to queue behind the load",
    )
    assert models(h)["slow"]["state"] == "loading"

    _point(link, gguf["a"])
    _release(fifo)  # llama-server's first read sees EOF; its second open finds the GGUF
    out, err = loading.communicate(timeout=120)
    assert loading.returncode == 0, err
    assert out.strip() == "slow: loaded on ram"
    waiting.join(60)
    assert answers == [200]


def _point(link: Path, target: Path) -> None:
    """Re-point ``link`` at ``target`` in one step."""
    new = link.with_suffix(".new")
    new.symlink_to(target)
    os.replace(new, link)


def _release(fifo: Path) -> None:
    """Open the FIFO's write end (its reader is waiting in open) and close it at once."""
    deadline = time.monotonic() + 15
    while True:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError:  # ENXIO: no reader yet
            if time.monotonic() > deadline:
                pytest.fail("llama-server never opened the FIFO")
            time.sleep(0.02)


def _chat(h: Any, model: str) -> int:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        h.proxy_url + "/v1/chat/completions",
        data=json.dumps({**json.loads(body), "max_tokens": 2}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_a_server_killed_mid_stream_ends_the_stream_and_the_model_comes_back(
    helix: Any, llama_server: Path, gguf: dict[str, Path]
) -> None:
    h = helix(config(llama_server, {"long": gguf["long"]}))
    assert h.ctl("load", "long", timeout=90).returncode == 0
    pid = models(h)["long"]["process"]["pid"]
    body = {
        "model": "long",
        "stream": True,
        "max_tokens": 6000,
        "ignore_eos": True,  # llama-server's own: random weights say </s> early
        "messages": [{"role": "user", "content": "hi"}],
    }

    async def main() -> list[str]:
        async with aiohttp.ClientSession(trust_env=False) as session:
            url = h.proxy_url + "/v1/chat/completions"
            async with session.post(url, json=body) as response:
                assert response.status == 200
                lines: list[str] = []
                async for raw in response.content:
                    line = raw.decode().strip()
                    if line:
                        lines.append(line)
                    if len(lines) == 3:
                        os.kill(pid, signal.SIGKILL)
                return lines

    lines = asyncio.run(main())
    assert lines[-1] != "data: [DONE]", "the stream finished before the kill"
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_failed"
    assert "closed before the answer was complete" in last["error"]["message"]
    wait_for_sync(lambda: models(h)["long"]["state"] == "unloaded", what="long to be lost")
    assert "SIGKILL" in models(h)["long"]["message"]
    # The next request loads it again.
    assert _chat(h, "long") == 200
    back = models(h)["long"]
    assert back["state"] == "loaded" and back["process"]["pid"] != pid


def test_a_corrupt_gguf_fails_the_load_with_llama_servers_own_words(
    helix: Any, llama_server: Path, gguf: dict[str, Path], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a model\n")
    h = helix(config(llama_server, {"junk": junk}))
    said = "gguf_init_from_reader: invalid magic characters: 'not ', expected 'GGUF'"
    result = h.ctl("load", "junk", timeout=90)
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith(
        "helixctl: junk failed to load: llama:junk exited with code 1 while loading: "
        f"{said}; see helixctl logs llama:junk; next try in "
    ), result.stderr
    assert "last log lines:" in result.stderr
    assert "exiting due to model loading error" in result.stderr  # its very last line
    m = models(h)["junk"]
    assert m["state"] == "failed" and said in m["message"]
    assert any(said in line for line in m["log_tail"])
    table = h.ctl("models")
    assert said in table.stdout
    # The endpoint says the same to a client, and fails fast while the model cools down.
    status, error = _post_json(h, {"model": "junk", "messages": [{"role": "user", "content": "x"}]})
    assert status == 503 and said in error["error"]["message"]


def _post_json(h: Any, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        h.proxy_url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


FAKE = Path(__file__).resolve().parents[1] / "fakes" / "llama_server.py"


class Server:
    """One llama-server process (real or fake) on a free port, its stderr kept."""

    def __init__(self, argv: list[str], log: Path) -> None:
        from helixd.supervisor.spec import free_port

        self.port = free_port()
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [*argv, "--host", "127.0.0.1", "--port", str(self.port), "-t", "1"],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int | None, Any]:
        return get(self.url + path)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)


def _started(server: Server) -> Server:
    wait_for_sync(lambda: _answers(server), what=f"{server.log.name} to answer")
    return server


def _answers(server: Server) -> bool:
    return server.get("/health")[0] is not None or server.proc.poll() is not None


@pytest.fixture
def spawned() -> Any:
    """Servers a test starts itself: killed at teardown, whatever the test left running."""
    servers: list[Server] = []
    yield servers
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(30)


def test_the_protocol_fake_answers_as_the_real_llama_server_does(
    llama_server: Path, gguf: dict[str, Path], tmp_path: Path, spawned: list[Server]
) -> None:
    """What helixd relies on, side by side: the real server and tests/fakes/llama_server.py."""
    import sys

    def start(argv: list[str], log: str) -> Server:
        server = Server(argv, tmp_path / log)
        spawned.append(server)
        return server

    fake_cmd = [sys.executable, str(FAKE)]
    model_file = tmp_path / "fake-model.json"
    model_file.write_text(json.dumps({"mib": 1, "n_ctx_train": 512}))
    slow_file = tmp_path / "fake-slow.json"
    slow_file.write_text(json.dumps({"mib": 1, "load_seconds": 60}))
    fifo = tmp_path / "load.fifo"
    os.mkfifo(fifo)

    # Loading: every API route answers 503 "Loading model"; SIGTERM kills it outright.
    real = _started(start([str(llama_server), "-m", str(fifo)], "real-loading"))
    fake = _started(start([*fake_cmd, "-m", str(slow_file)], "fake-loading"))
    for path in ("/health", "/v1/models", "/props", "/slots", "/metrics"):
        assert real.get(path) == fake.get(path), path
        assert real.get(path)[0] == 503
    assert real.stop() == fake.stop() == -signal.SIGTERM

    # Ready: the same answers, the same shapes (the fake's keys are among the real ones).
    real = _started(start([str(llama_server), "-m", str(gguf["a"]), "-c", "256"], "real"))
    fake = _started(start([*fake_cmd, "-m", str(model_file), "-c", "256"], "fake"))
    wait_for_sync(lambda: real.get("/health")[0] == fake.get("/health")[0] == 200, what="ready")
    for path in ("/health", "/metrics", "/no-such-route"):
        assert real.get(path) == fake.get(path), path
    (real_card,), (fake_card,) = (
        real.get("/v1/models")[1]["data"],
        fake.get("/v1/models")[1]["data"],
    )
    assert set(fake_card) == set(real_card)
    assert set(fake_card["meta"]) == set(real_card["meta"])
    assert real_card["aliases"] == [real_card["id"]] and fake_card["aliases"] == [fake_card["id"]]
    real_props, fake_props = real.get("/props")[1], fake.get("/props")[1]
    assert set(fake_props) - {"endpoint_props"} <= set(real_props)
    for props in (real_props, fake_props):
        assert props["total_slots"] == 4 and props["default_generation_settings"]["n_ctx"] == 256
    assert real.get("/slots") == fake.get("/slots")
    for server in (real, fake):
        status, answer = _post(
            server.url,
            {"model": "any name", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        assert status == 200 and answer["model"] != "any name"  # its own model's name
    # A streamed answer ends the connection (with no "Connection: close"); a whole one not.
    for server in (real, fake):
        assert _closes_after(server.port, stream=True), server.log.name
        assert not _closes_after(server.port, stream=False), server.log.name
    assert real.stop() == fake.stop() == 0

    # Not a model: the same first error line, exit 1.
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a model\n")
    lines = {}
    for name, argv in (("real", [str(llama_server)]), ("fake", fake_cmd)):
        server = start([*argv, "-m", str(junk)], f"{name}-junk")
        assert server.proc.wait(30) == 1
        lines[name] = telling_line(server.log.read_text().splitlines())
    assert (
        lines["real"]
        == lines["fake"]
        == ("gguf_init_from_reader: invalid magic characters: 'not ', expected 'GGUF'")
    )


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def _closes_after(port: int, *, stream: bool) -> bool:
    """Whether the server ends a keep-alive connection after one chat answer: a second
    request on the same connection gets no answer."""
    import socket

    payload = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        | {"stream": stream}
    ).encode()
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        first = _read_answer(sock)
        assert first.startswith(b"HTTP/1.1 200") and b"Connection: close" not in first
        try:
            sock.sendall(request)
            return not _read_answer(sock).startswith(b"HTTP/1.1 200")
        except OSError:  # reset by the peer
            return True


def _read_answer(sock: Any) -> bytes:
    """One whole HTTP answer (chunked or with a length), or what came before EOF."""
    received = b""
    while True:
        head, sep, body = received.partition(b"\r\n\r\n")
        if sep:
            lengths = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if lengths and len(body) >= lengths[0]:
                return received
            if not lengths and body.endswith(b"0\r\n\r\n"):
                return received
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


def test_the_models_own_port_answers_only_helixd(
    helix: Any, llama_server: Path, gguf: dict[str, Path]
) -> None:
    """helixd starts llama-server with a key of that start's own (LLAMA_API_KEY) and sends
    it: a local user calling the model's port directly cannot go around api_keys."""
    h = helix(config(llama_server, {"tiny": gguf["a"]}))
    assert h.ctl("load", "tiny").returncode == 0
    upstream = models(h)["tiny"]["upstream"]
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    direct = urllib.request.Request(
        upstream + "/v1/chat/completions", body.encode(), {"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(direct, timeout=30)
    assert refused.value.code == 401
    assert get(upstream + "/health")[0] == 200  # the probe stays open, as llama-server has it
    client = openai.OpenAI(base_url=h.proxy_url + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body=NO_EOS
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 2
    # The key is in no document helixd shows.
    assert "LLAMA_API_KEY" not in h.ctl("--json", "status").stdout
