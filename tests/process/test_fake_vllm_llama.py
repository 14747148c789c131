"""The fake vLLM and llama.cpp servers (``tests/fakes/{vllm,llama}_server.py``) as processes.

Each fake runs as a real process against a fake NVML directory holding one 24 GiB card
(300 MiB used by the driver), and is read through helixd's own ``ResourceMonitor``, as
test_gpu_holder.py does. Every wait polls against a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helixd.resources.gpu import GpuReader
from helixd.resources.monitor import ResourceMonitor
from tests.conftest import wait_for_sync
from tests.process.fake_nvml import load_fake_nvml

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKES = REPO_ROOT / "tests" / "fakes"
MIB = 1024 * 1024
GIB = 1024 * MIB
TOTAL_MIB = 24576
DEVICE = {
    "name": "NVIDIA GeForce RTX 4090 (fake)",
    "uuid": "GPU-0a0b1c2d-0000-4000-8000-000000000000",
    "total_mib": TOTAL_MIB,
    "baseline_used_mib": 300,
}
DEADLINE_S = 15.0
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    port: int,
    path: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request; an HTTP error is a reply, a refused connection raises ConnectionRefusedError."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers or {}
    )
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with OPENER.open(request, timeout=10) as response:
            return Reply(response.status, response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read())
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            raise exc.reason from None
        raise


def chat(port: int, model: str = "m", headers: dict[str, str] | None = None) -> Reply:
    message = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return http(port, "/v1/chat/completions", "POST", message, headers)


@dataclass
class Server:
    """One fake server process, its port and its output files."""

    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def exit_code(self) -> int:
        return self.proc.wait(timeout=DEADLINE_S)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.exit_code()


@dataclass
class Lab:
    """A fake NVML directory with one 24 GiB card, a monitor over it, and process starters."""

    root: Path
    tmp: Path
    monitor: ResourceMonitor
    servers: list[Server] = field(default_factory=list)

    def model(self, name: str, **fields: float) -> Path:
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(fields))
        return path

    def start(self, argv: list[str], env: dict[str, str] | None = None, port: int = 0) -> Server:
        index = len(self.servers)
        out, err = self.tmp / f"server{index}.out", self.tmp / f"server{index}.err"
        environment = {k: v for k, v in os.environ.items() if k != "VLLM_SERVER_DEV_MODE"}
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, *argv],
                cwd=REPO_ROOT,
                env=environment | (env or {}),
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own group: teardown reaches the engine core too
            )
        server = Server(proc, port, out, err)
        self.servers.append(server)
        return server

    def vllm(self, model: Path | str, *flags: str, dev_mode: bool = False) -> Server:
        port = free_port()
        argv = [str(FAKES / "vllm_server.py"), "serve", str(model), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--served-model-name", "m", *flags]
        return self.start(argv, {"VLLM_SERVER_DEV_MODE": "1"} if dev_mode else None, port)

    def llama(self, model: Path | str, *flags: str) -> Server:
        port = free_port()
        argv = [str(FAKES / "llama_server.py"), "-m", str(model), "--port", str(port), *flags]
        return self.start(argv, port=port)

    def holder(self, mib: float) -> Server:
        argv = [str(FAKES / "gpu_holder.py"), "--mib", str(mib), "--", "--port", "0"]
        return self.start(argv)

    async def usage(self, pid: int) -> tuple[int, int]:
        """(RSS bytes, GPU 0 bytes) of the process tree of ``pid``."""
        rss, gpu = await self.monitor.tree_usage(pid)
        return rss, gpu.get(0, 0)


@pytest.fixture
async def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Lab]:
    root = tmp_path / "nvml"
    (root / "procs").mkdir(parents=True)
    (root / "devices.json").write_text(json.dumps([DEVICE]))
    monkeypatch.setenv("HELIXD_FAKE_NVML_DIR", str(root))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = load_fake_nvml("fakes")
    monitor = ResourceMonitor("auto", reader_factory=lambda s: GpuReader(s, nvml=nvml))
    await monitor.open()
    the_lab = Lab(root, tmp_path, monitor)
    try:
        yield the_lab
    finally:
        await monitor.close()
        for server in the_lab.servers:
            if server.proc.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)  # the group this test started
            server.proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)  # an engine core left behind


def poll(probe: Callable[[], Any], what: str) -> Any:
    """Call ``probe`` until it returns something truthy; that value."""
    found: list[Any] = []

    def check() -> bool:
        value = probe()
        if value:
            found.append(value)
        return bool(value)

    wait_for_sync(check, timeout=DEADLINE_S, what=what)
    return found[0]


def health_or_refused(server: Server, path: str = "/health") -> Reply | None:
    """The reply, or None while the port refuses connections (the process must be alive)."""
    assert server.proc.poll() is None, server.output()
    try:
        return http(server.port, path)
    except ConnectionRefusedError:
        return None


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


def requested_bytes(fraction: float) -> int:
    return math.ceil(TOTAL_MIB * MIB * fraction)  # vLLM's request_memory


# -- vLLM ----------------------------------------------------------------------------------


async def test_vllm_refuses_connections_while_loading_then_serves(lab: Lab) -> None:
    model = lab.model("slow", load_seconds=1.5)
    server = lab.vllm(model, "--gpu-memory-utilization", "0.5")
    # Loading: the port is bound (another bind fails) yet nothing listens (refused).
    poll(
        lambda: port_taken(server.port) and health_or_refused(server) is None,
        "the vLLM fake to bind its port and refuse connections while it loads",
    )
    reply = poll(lambda: health_or_refused(server), "the vLLM fake to listen")
    assert (reply.status, reply.body) == (200, b"")
    assert "Application startup complete." in server.output()
    assert f"Starting vLLM API server 0 on http://127.0.0.1:{server.port}" in server.output()

    models = http(server.port, "/v1/models").json()
    (card,) = models["data"]
    assert models["object"] == "list"
    assert card["id"] == "m" and card["owned_by"] == "vllm" and card["root"] == str(model)
    assert card["object"] == "model" and card["parent"] is None and card["max_model_len"] == 4096
    assert card["permission"][0]["object"] == "model_permission"
    assert http(server.port, "/version").json() == {"version": "0.33.0"}
    assert http(server.port, "/load").json() == {"server_load": 0}
    assert chat(server.port).json()["choices"][0]["message"]["content"] == "echo: hi"
    wrong = chat(server.port, model="x")
    assert wrong.status == 404
    assert wrong.json()["error"]["message"] == "The model `x` does not exist."

    # F x total on the GPU, held by the engine-core child, not by the API server.
    _, gpu = await lab.usage(server.pid)
    assert gpu == requested_bytes(0.5)
    sample = await lab.monitor.sample()
    assert server.pid not in sample.process_gpu_bytes
    assert list(sample.process_gpu_bytes.values()) == [{0: requested_bytes(0.5)}]

    assert server.stop() == 0
    sample = await lab.monitor.sample()
    assert sample.process_gpu_bytes == {}


async def test_vllm_exits_1_when_free_memory_is_below_the_utilization(lab: Lab) -> None:
    # 0.99 x 24 GiB = 23.76 GiB wanted; the driver's 300 MiB leave 23.71 GiB free.
    server = lab.vllm("some/model", "--gpu-memory-utilization", "0.99")
    assert server.exit_code() == 1
    assert (
        "ValueError: Free memory on device cuda:0 (23.71/24.0 GiB) on startup is less than "
        "desired GPU memory utilization (0.99, 23.76 GiB). Decrease GPU memory utilization "
        "or reduce GPU memory used by other processes."
    ) in server.output()
    assert (await lab.monitor.sample()).process_gpu_bytes == {}


async def test_vllm_sleep_level_1_offloads_to_host_and_wake_up_takes_it_back(lab: Lab) -> None:
    model = lab.model("sleepy", host_mib=256, residual_mib=512)
    server = lab.vllm(
        model, "--gpu-memory-utilization", "0.5", "--enable-sleep-mode", dev_mode=True
    )
    poll(lambda: health_or_refused(server), "the vLLM fake to listen")
    awake_rss, gpu = await lab.usage(server.pid)
    assert gpu == requested_bytes(0.5)

    for _ in range(2):  # a second sleep is a no-op ("Executor is already sleeping.")
        reply = http(server.port, "/sleep?level=1", "POST")
        assert (reply.status, reply.body) == (200, b"")
    assert http(server.port, "/is_sleeping").json() == {"is_sleeping": True}
    asleep_rss, gpu = await lab.usage(server.pid)
    assert gpu == 512 * MIB
    assert asleep_rss - awake_rss > 200 * MIB, (awake_rss, asleep_rss)
    assert 'sleep_state="weights_offloaded"} 1.0' in http(server.port, "/metrics").body.decode()
    assert http(server.port, "/health").status == 200  # health and listings stay up

    # An inference request waits for the wake-up, as behind vLLM's paused scheduler.
    answers: list[Reply] = []
    waiter = threading.Thread(target=lambda: answers.append(chat(server.port)))
    waiter.start()
    poll(
        lambda: (
            'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0'
            in http(server.port, "/metrics").body.decode()
        ),
        "the request to wait while asleep",
    )
    assert not answers
    for _ in range(2):  # a second wake-up is a no-op ("Executor is not sleeping.")
        reply = http(server.port, "/wake_up", "POST")
        assert (reply.status, reply.body) == (200, b"")
    waiter.join(timeout=DEADLINE_S)
    assert answers[0].status == 200 and "echo: hi" in answers[0].body.decode()
    assert http(server.port, "/is_sleeping").json() == {"is_sleeping": False}
    woken_rss, gpu = await lab.usage(server.pid)
    assert gpu == requested_bytes(0.5)
    assert asleep_rss - woken_rss > 200 * MIB, (asleep_rss, woken_rss)
    assert server.stop() == 0


async def test_vllm_wake_up_fails_while_the_card_is_full_and_stays_asleep(lab: Lab) -> None:
    model = lab.model("deep", residual_mib=512)
    server = lab.vllm(
        model, "--gpu-memory-utilization", "0.5", "--enable-sleep-mode", dev_mode=True
    )
    poll(lambda: health_or_refused(server), "the vLLM fake to listen")
    rss_before, _ = await lab.usage(server.pid)
    assert http(server.port, "/sleep?level=2", "POST").status == 200  # weights dropped
    rss_asleep, gpu = await lab.usage(server.pid)
    assert gpu == 512 * MIB and rss_asleep - rss_before < 20 * MIB

    holder = lab.holder(20 * 1024)  # takes the room the engine gave back
    # "listening on" comes after the allocation and after its SIGTERM handler is in place.
    poll(lambda: "listening on" in holder.out.read_text(), "the holder to take 20 GiB")
    reply = http(server.port, "/wake_up", "POST")
    assert reply.status == 500
    assert "out of memory" in reply.json()["error"]["message"]
    assert http(server.port, "/is_sleeping").json() == {"is_sleeping": True}
    assert (await lab.usage(server.pid))[1] == 512 * MIB

    assert holder.stop() == 0
    assert http(server.port, "/wake_up", "POST").status == 200
    assert (await lab.usage(server.pid))[1] == requested_bytes(0.5)
    assert server.stop() == 0


async def test_vllm_sleep_without_enable_sleep_mode_frees_nothing(lab: Lab) -> None:
    server = lab.vllm("plain", "--gpu-memory-utilization", "0.3", dev_mode=True)
    poll(lambda: health_or_refused(server), "the vLLM fake to listen")
    # vLLM does not refuse: the allocator owns nothing, so sleeping frees nothing.
    assert http(server.port, "/sleep", "POST").status == 200
    assert http(server.port, "/is_sleeping").json() == {"is_sleeping": True}
    assert (await lab.usage(server.pid))[1] == requested_bytes(0.3)
    assert server.stop() == 0


async def test_vllm_sleep_routes_need_dev_mode_and_v1_needs_the_key(lab: Lab) -> None:
    server = lab.vllm("plain", "--gpu-memory-utilization", "0.3", "--enable-sleep-mode",
                      "--api-key", "sekret")  # fmt: skip
    poll(lambda: health_or_refused(server), "the vLLM fake to listen")
    assert http(server.port, "/sleep", "POST").status == 404
    assert http(server.port, "/is_sleeping").status == 404
    assert http(server.port, "/wake_up", "POST").status == 404
    denied = http(server.port, "/v1/models")
    assert (denied.status, denied.json()) == (401, {"error": "Unauthorized"})
    key = {"Authorization": "Bearer sekret"}
    assert http(server.port, "/v1/models", headers=key).status == 200
    assert chat(server.port, headers=key).status == 200
    assert http(server.port, "/health").status == 200  # only /v1… is guarded
    assert http(server.port, "/metrics").status == 200
    assert server.stop() == 0


async def test_vllm_unknown_flag_exits_2_like_argparse(lab: Lab) -> None:
    server = lab.vllm("plain", "--no-such-flag")
    assert server.exit_code() == 2
    assert "unrecognized arguments: --no-such-flag" in server.output()


# -- llama.cpp -----------------------------------------------------------------------------


async def test_llama_answers_503_loading_model_then_serves_and_holds_its_mib(lab: Lab) -> None:
    model = lab.model("tiny", mib=3000, load_seconds=1.5)
    server = lab.llama(model, "-a", "tiny", "-c", "8192", "-np", "2")
    loading = poll(lambda: health_or_refused(server, "/v1/models"), "llama to listen at once")
    assert loading.status == 503
    assert loading.json() == {
        "error": {"message": "Loading model", "type": "unavailable_error", "code": 503}
    }
    ready = poll(
        lambda: (r := http(server.port, "/health")).status == 200 and r,
        "llama to finish loading",
    )
    assert ready.json() == {"status": "ok"}

    (card,) = http(server.port, "/v1/models").json()["data"]
    assert card["id"] == "tiny" and card["owned_by"] == "llamacpp" and card["object"] == "model"
    assert card["meta"]["size"] == 3000 * MIB
    assert {"vocab_type", "n_vocab", "n_ctx_train", "n_embd", "n_params"} <= set(card["meta"])
    props = http(server.port, "/props").json()
    assert props["total_slots"] == 2 and props["model_path"] == str(model)
    assert props["is_sleeping"] is False
    assert props["default_generation_settings"]["n_ctx"] == 4096  # 8192 over 2 slots
    slots = http(server.port, "/slots").json()
    assert [s["is_processing"] for s in slots] == [False, False]
    assert chat(server.port, model="any name").json()["choices"][0]["message"]["content"] == (
        "echo: hi"
    )

    _, gpu = await lab.usage(server.pid)
    assert gpu == 3000 * MIB
    assert server.stop() == 0
    assert (await lab.monitor.sample()).process_gpu_bytes == {}


async def test_llama_out_of_memory_exits_1_with_cudamalloc_text(lab: Lab) -> None:
    server = lab.llama(lab.model("huge", mib=30000))
    assert server.exit_code() == 1
    text = server.output()
    assert re.search(
        r"ggml_backend_cuda_buffer_type_alloc_buffer: allocating 30000\.00 MiB on device 0: "
        r"cudaMalloc failed: out of memory",
        text,
    )
    assert "llama_model_load: error loading model" in text
    assert "llama_server: exiting due to model loading error" in text
    assert (await lab.monitor.sample()).process_gpu_bytes == {}


async def test_llama_on_the_cpu_holds_nothing_and_a_missing_model_exits_1(lab: Lab) -> None:
    cpu = lab.llama(lab.model("small", mib=2000), "-ngl", "0", "--api-key", "k")
    poll(lambda: (r := health_or_refused(cpu)) is not None and r.status == 200, "llama on CPU")
    assert (await lab.usage(cpu.pid))[1] == 0
    assert http(cpu.port, "/props").status == 401
    assert http(cpu.port, "/props", headers={"X-Api-Key": "k"}).status == 200
    assert (
        http(cpu.port, "/v1/embeddings", "POST", {"input": "x"}, {"X-Api-Key": "k"}).status == 501
    )

    missing = lab.llama(lab.tmp / "nope.json")
    assert missing.exit_code() == 1
    assert "failed to load model" in missing.output()
    assert cpu.stop() == 0
