"""The LocalAI and TabbyAPI fakes as real processes on a fake 24 GiB GPU.

``tests/fakes/localai_server.py`` runs one backend process per model (``gpu_holder.py``,
holding the model's MiB under its own pid); ``tests/fakes/tabby_server.py`` holds its one
model's memory in the server process. Both are read here through the fake NVML's own
allocation table. Every wait polls against a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest
import yaml

from tests.conftest import wait_for_sync
from tests.process.fake_nvml import load_fake_nvml

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKES = REPO_ROOT / "tests" / "fakes"
FAKE_NVML = FAKES / "nvml" / "pynvml.py"
MIB = 1024 * 1024
DEVICES = [
    {
        "name": "NVIDIA GeForce RTX 4090 (fake)",
        "uuid": "GPU-0a0b1c2d-0000-4000-8000-000000000000",
        "total_mib": 24576,
        "baseline_used_mib": 300,
    }
]
DEADLINE_S = 15.0
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> Reply:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with OPENER.open(request, timeout=DEADLINE_S) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Server:
    """One fake server process, its address and its output files."""

    proc: subprocess.Popen[bytes]
    port: int
    err: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_listening(self) -> None:
        wait_for_sync(
            lambda: listening(self.port) or self.proc.poll() is not None,
            timeout=DEADLINE_S,
            what="the fake to listen",
        )
        assert self.proc.poll() is None, self.stderr()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE_S)


@dataclass
class Lab:
    """A fake NVML with one 24 GiB card, a models folder, and the servers started."""

    root: Path
    nvml: ModuleType
    start: Callable[..., Server]

    def held(self) -> dict[int, int]:
        """pid → bytes on GPU 0, as the fake driver counts them (live pids only)."""
        return {pid: per[0] for pid, per in self.nvml.allocations().items() if 0 in per}


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    root = tmp_path / "nvml"
    (root / "procs").mkdir(parents=True)
    (root / "devices.json").write_text(json.dumps(DEVICES))
    monkeypatch.setenv("HELIXD_FAKE_NVML_DIR", str(root))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for variable in [v for v in os.environ if v.startswith(("LOCALAI_", "WATCHDOG_"))]:
        monkeypatch.delenv(variable)
    servers: list[Server] = []

    def start(
        script: str, *args: str, env: dict[str, str] | None = None, cwd: Path = tmp_path
    ) -> Server:
        port = free_port()
        argv = [sys.executable, str(FAKES / script), *(a.format(port=port) for a in args)]
        err = tmp_path / f"server{len(servers)}.err"
        with open(err, "wb") as stderr:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        server = Server(proc, port, err)
        servers.append(server)
        return server

    yield Lab(root, load_fake_nvml("localai_tabby"), start)
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


def wait_held(lab: Lab, expected: dict[int, int], what: str) -> None:
    wait_for_sync(lambda: lab.held() == expected, timeout=DEADLINE_S, what=what)


# -- LocalAI -----------------------------------------------------------------------------


def localai(lab: Lab, tmp_path: Path, *flags: str, **env: str) -> Server:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    specs = {
        "small": {"mib": 2048, "load_seconds": 0.2, "backend": "llama-cpp"},
        "other": {"mib": 3072, "backend": "llama-cpp"},
        "huge": {"mib": 30000, "backend": "llama-cpp"},
    }
    for name, spec in specs.items():
        (models / f"{name}.json").write_text(json.dumps(spec))
    argv = ["localai_server.py", "run", "--address", "127.0.0.1:{port}"]
    server = lab.start(*argv, "--models-path", str(models), *flags, env=env)
    server.wait_listening()
    return server


def backend_pid(lab: Lab, server: Server, mib: int) -> int:
    """The pid holding ``mib`` on the GPU, checked to be a child of ``server``."""
    pids = [pid for pid, held in lab.held().items() if held == mib * MIB]
    assert len(pids) == 1, lab.held()
    assert psutil.Process(pids[0]).ppid() == server.proc.pid
    return pids[0]


def loaded_ids(server: Server) -> list[str]:
    system = call(f"{server.url}/system")
    assert system.status == 200, system.body
    return [m["id"] for m in system.json()["loaded_models"]]


def test_localai_starts_loads_monitors_and_shuts_down(lab: Lab, tmp_path: Path) -> None:
    server = localai(lab, tmp_path, "--fake-start-seconds", "1.5")
    assert call(f"{server.url}/healthz").status == 200
    starting = call(f"{server.url}/readyz")
    assert (starting.status, starting.json()) == (503, {"status": "starting"})
    wait_for_sync(
        lambda: call(f"{server.url}/readyz").status == 200, timeout=DEADLINE_S, what="ready"
    )
    models = call(f"{server.url}/v1/models").json()
    assert {m["id"] for m in models["data"]} == {"small", "other", "huge"}

    loaded = call(f"{server.url}/backend/load", "POST", {"model": "small"})
    assert (loaded.status, loaded.json()) == (200, {"loaded": ["small"], "message": "model loaded"})
    system = call(f"{server.url}/system").json()
    assert system["loaded_models"] == [{"id": "small", "backend": "llama-cpp"}]
    pid = backend_pid(lab, server, 2048)

    monitor = call(f"{server.url}/backend/monitor?model=small")
    assert monitor.status == 200, monitor.body
    assert monitor.json()["state"] == -1
    memory = monitor.json()["memory"]
    assert memory["breakdown"]["gopsutil-RSS"] > 0 and memory["total"] > 0
    assert abs(memory["breakdown"]["gopsutil-RSS"] - psutil.Process(pid).memory_info().rss) < (
        64 * MIB
    )
    by_body = call(f"{server.url}/backend/monitor", "GET", {"model": "small"})
    assert by_body.status == 200 and by_body.json()["state"] == -1

    chat = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
    answer = call(f"{server.url}/v1/chat/completions", "POST", chat)
    assert answer.json()["choices"][0]["message"]["content"] == "echo: hi"

    stopped = call(f"{server.url}/backend/shutdown", "POST", {"model": "small"})
    assert (stopped.status, stopped.json()) == (200, {"message": "model stopped"})
    wait_held(lab, {}, "the backend's memory to be freed")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert loaded_ids(server) == []

    again = call(f"{server.url}/backend/shutdown", "POST", {"model": "small"})
    assert again.status == 404
    assert 'model "small" is not loaded' in again.json()["error"]["message"]
    not_loaded = call(f"{server.url}/backend/monitor?model=small")
    assert not_loaded.status == 500
    assert not_loaded.json()["error"]["message"] == "backend small is not currently loaded"
    unknown = call(f"{server.url}/backend/load", "POST", {"model": "nope"})
    assert unknown.status == 500 and unknown.json()["loaded"] is None
    assert unknown.json()["message"].startswith("failed to load model: could not load model")

    # On demand: a completion loads its model, then SIGTERM stops every backend.
    call(f"{server.url}/v1/completions", "POST", {"model": "other", "prompt": "x"})
    child = backend_pid(lab, server, 3072)
    assert server.terminate() == 0
    wait_for_sync(lambda: not psutil.pid_exists(child), timeout=DEADLINE_S, what="backend gone")


def test_localai_out_of_memory_is_a_500_then_cools_down(lab: Lab, tmp_path: Path) -> None:
    server = localai(lab, tmp_path, "--fake-start-seconds", "0")
    failed = call(f"{server.url}/backend/load", "POST", {"model": "huge"})
    assert failed.status == 500
    assert failed.json()["loaded"] is None
    assert "CUDA out of memory" in failed.json()["message"]
    assert lab.held() == {} and loaded_ids(server) == []
    # LocalAI refuses to respawn a backend that just failed (--model-load-failure-cooldown).
    refused = call(f"{server.url}/backend/load", "POST", {"model": "huge"})
    assert refused.status == 503 and int(refused.headers["Retry-After"]) >= 1


def test_localai_max_active_backends_evicts_the_lru(lab: Lab, tmp_path: Path) -> None:
    server = localai(lab, tmp_path, "--fake-start-seconds", "0", LOCALAI_MAX_ACTIVE_BACKENDS="1")
    assert call(f"{server.url}/backend/load", "POST", {"model": "small"}).status == 200
    first = backend_pid(lab, server, 2048)
    assert call(f"{server.url}/backend/load", "POST", {"model": "other"}).status == 200
    assert loaded_ids(server) == ["other"]
    second = backend_pid(lab, server, 3072)
    assert lab.held() == {second: 3072 * MIB}
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE


def test_localai_idle_watchdog_stops_idle_backends(lab: Lab, tmp_path: Path) -> None:
    flags = ["--enable-watchdog-idle", "--watchdog-idle-timeout", "300ms"]
    server = localai(lab, tmp_path, *flags, "--watchdog-interval", "50ms")
    assert call(f"{server.url}/backend/load", "POST", {"model": "other"}).status == 200
    wait_for_sync(lambda: loaded_ids(server) == [], timeout=DEADLINE_S, what="the idle stop")
    wait_held(lab, {}, "the idle backend's memory freed")


def test_localai_api_keys(lab: Lab, tmp_path: Path) -> None:
    server = localai(lab, tmp_path, "--fake-start-seconds", "0", "--api-keys", "k1,k2")
    assert call(f"{server.url}/healthz").status == 200
    assert call(f"{server.url}/readyz").status == 200
    refused = call(f"{server.url}/v1/models", headers={"Content-Type": "application/json"})
    assert refused.status == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert refused.json() == {
        "error": {
            "code": 401,
            "message": "An authentication key is required",
            "type": "invalid_request_error",
        }
    }
    assert call(f"{server.url}/system", headers={"Authorization": "Bearer nope"}).status == 401
    assert call(f"{server.url}/system", headers={"Authorization": "Bearer k2"}).status == 200
    assert call(f"{server.url}/v1/models", headers={"x-api-key": "k1"}).status == 200


# -- TabbyAPI ----------------------------------------------------------------------------


def tabby_models(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    specs = {
        "alpha": {"mib": 4096, "load_seconds": 0.3},
        "beta": {"mib": 6144, "modules": 4},
        "huge": {"mib": 30000},
    }
    for name, spec in specs.items():
        (models / name).mkdir(parents=True)
        (models / name / "fake.json").write_text(json.dumps(spec))
    return models


def tokens(cwd: Path) -> dict[str, str]:
    text = (cwd / "api_tokens.yml").read_text()
    assert re.fullmatch(r"admin_key: [0-9a-f]{32}\napi_key: [0-9a-f]{32}\n", text), text
    data: dict[str, str] = yaml.safe_load(text)
    return data


def load_events(server: Server, name: str, key: str) -> tuple[Reply, list[dict[str, Any]]]:
    reply = call(f"{server.url}/v1/model/load", "POST", {"model_name": name}, {"x-admin-key": key})
    text = reply.body.decode()
    events = [json.loads(chunk[len("data: ") :]) for chunk in text.split("\r\n\r\n") if chunk]
    return reply, events


def test_tabby_auth_load_swap_and_unload(lab: Lab, tmp_path: Path) -> None:
    models = tabby_models(tmp_path)
    server = lab.start("tabby_server.py", "--port", "{port}", "--model-dir", str(models))
    server.wait_listening()
    keys = tokens(tmp_path)
    api, admin = {"x-api-key": keys["api_key"]}, keys["admin_key"]
    health = call(f"{server.url}/health")
    assert (health.status, health.json()["status"]) == (200, "healthy")
    none = call(f"{server.url}/v1/model", headers=api)
    assert (none.status, none.json()) == (503, {"detail": "No models are currently loaded."})

    body = {"model_name": "alpha"}
    missing = call(f"{server.url}/v1/model/load", "POST", body)
    assert (missing.status, missing.json()) == (401, {"detail": "Please provide an admin key"})
    wrong = call(f"{server.url}/v1/model/load", "POST", body, {"x-admin-key": keys["api_key"]})
    assert (wrong.status, wrong.json()) == (401, {"detail": "Invalid admin key"})
    unknown = call(
        f"{server.url}/v1/model/load", "POST", {"model_name": "nope"}, {"x-admin-key": admin}
    )
    assert unknown.status == 400 and "Could not find the model path" in unknown.json()["detail"]

    reply, events = load_events(server, "alpha", admin)
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    assert [e["status"] for e in events] == ["processing"] * 10 + ["finished"]
    assert [e["module"] for e in events] == [*range(1, 11), 10]
    assert {(e["model_type"], e["modules"]) for e in events} == {("model", 10)}
    card = call(f"{server.url}/v1/model", headers=api).json()
    assert (card["id"], card["object"], card["owned_by"]) == ("alpha", "model", "tabbyAPI")
    assert card["parameters"]["max_seq_len"] == 4096
    assert lab.held() == {server.proc.pid: 4096 * MIB}

    _, events = load_events(server, "beta", admin)  # a swap: alpha is unloaded first
    assert events[-1] == {"model_type": "model", "module": 4, "modules": 4, "status": "finished"}
    assert lab.held() == {server.proc.pid: 6144 * MIB}
    listed = call(f"{server.url}/v1/model/list", headers=api).json()["data"]
    assert [m["id"] for m in listed] == ["beta"]
    everything = call(f"{server.url}/v1/models", headers={"x-api-key": admin}).json()["data"]
    assert [m["id"] for m in everything] == ["alpha", "beta", "huge"]
    chat = {"model": "ignored", "messages": [{"role": "user", "content": "hi"}]}
    bearer = {"Authorization": f"Bearer {keys['api_key']}"}
    answer = call(f"{server.url}/v1/chat/completions", "POST", chat, bearer).json()
    assert (answer["model"], answer["choices"][0]["message"]["content"]) == ("beta", "echo: hi")

    unloaded = call(f"{server.url}/v1/model/unload", "POST", {}, {"x-admin-key": admin})
    assert unloaded.status == 200
    assert lab.held() == {}
    assert call(f"{server.url}/v1/model", headers=api).status == 503
    assert server.terminate() == 0


def test_tabby_out_of_memory_ends_the_stream_with_an_error(lab: Lab, tmp_path: Path) -> None:
    server = lab.start(
        "tabby_server.py", "--port", "{port}", "--model-dir", str(tabby_models(tmp_path))
    )
    server.wait_listening()
    reply, events = load_events(server, "huge", tokens(tmp_path)["admin_key"])
    assert reply.status == 200
    assert all(e.get("status") == "processing" for e in events[:-1])
    assert "CUDA out of memory" in events[-1]["error"]["message"]
    assert lab.held() == {}
    assert (
        call(f"{server.url}/v1/model", headers={"x-api-key": tokens(tmp_path)["api_key"]}).status
        == 503
    )


def test_tabby_loads_its_model_before_listening(lab: Lab, tmp_path: Path) -> None:
    models = tabby_models(tmp_path)
    (tmp_path / "api_tokens.yml").write_text("api_key: aaa\nadmin_key: bbb\n")
    server = lab.start(
        "tabby_server.py", "--port", "{port}", "--model-dir", str(models), "--model-name", "alpha"
    )
    refused: list[bool] = []

    def up() -> bool:
        if listening(server.port):
            return True
        refused.append(True)
        return server.proc.poll() is not None

    wait_for_sync(up, timeout=DEADLINE_S, what="the fake to listen after its load")
    assert refused, "the port was open before the model loaded"
    card = call(f"{server.url}/v1/model", headers={"x-api-key": "aaa"})
    assert card.status == 200 and card.json()["id"] == "alpha"  # loaded as soon as it listens
    assert lab.held() == {server.proc.pid: 4096 * MIB}
    assert (tmp_path / "api_tokens.yml").read_text() == "api_key: aaa\nadmin_key: bbb\n"
    assert server.terminate() == 0
