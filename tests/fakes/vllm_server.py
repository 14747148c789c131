"""A fake ``vllm serve`` (vLLM 0.33): its CLI, start-up, HTTP API and sleep mode, on fake GPUs.

    python tests/fakes/vllm_server.py serve MODEL [--host H] [--port P]
        [--served-model-name N [N ...]] [--gpu-memory-utilization F] [--enable-sleep-mode]
        [--api-key K [K ...]] [--max-model-len N] [--enable-server-load-tracking]

MODEL is a path to a JSON *model file* ``{"load_seconds": S, "host_mib": H,
"residual_mib": R, "wake_seconds": W, "max_model_len": N}`` (every key optional; defaults
0, 32, 512, 0, 4096) or any other string, which gets the defaults. ``load_seconds`` is how
long the engine takes to load, ``host_mib`` the host RAM the weights take when offloaded by
sleep level 1, ``residual_mib`` what stays on the GPU while asleep (CUDA context, buffers
outside vLLM's pool), ``wake_seconds`` how long ``/wake_up`` takes to map memory back.

vLLM cannot run here, so helixd's vLLM adapter is tested against this process. What it
follows, and where from (vllm-project/vllm sources read through the code search, November
2026; "unverified" marks what could not be confirmed):

Process and start-up
- Two processes, like vLLM's V1 engine with multiprocessing on: this API-server process
  and an engine-core child (this file run as ``_engine_core``, logs prefixed
  ``(EngineCore_DP0 pid=N)``). The child, not the server, picks the GPU and holds the
  GPU memory, and the offloaded weights of sleep level 1: a supervisor must measure the
  process *tree*. The child exits on SIGTERM or when the server closes its stdin; if the
  server is killed, an idle child exits at once and a loading one once its load is done.
- The port is bound before the engine starts and only ``listen()``-ed once the engine is
  ready (``create_server_socket`` binds with SO_REUSEADDR and SO_REUSEPORT, issue #8204,
  and uvicorn listens later): connections are *refused* while the model loads, and the
  port is taken all along. vLLM's default host is all interfaces.
- The engine checks free memory first (``request_memory`` in ``vllm/v1/worker/utils.py``):
  requested = ceil(F x total); if free < requested it fails with the real text, ``ValueError:
  Free memory on device cuda:0 (X/Y GiB) on startup is less than desired GPU memory
  utilization (F, Z GiB). Decrease GPU memory utilization or reduce GPU memory used by
  other processes.`` (numbers rounded to 2 decimals, like ``format_gib``), and the server
  exits 1. Otherwise the child grows to the requested bytes over ``load_seconds``
  (gpu_holder's ``allocate``; a device filled meanwhile gives its ``CUDA out of memory``).
- No fake NVML state, or no visible device: exits 1 with ``RuntimeError: Failed to infer
  device type`` / ``RuntimeError: No CUDA GPUs are available`` (wording unverified).
- Log lines imitate vLLM's format (``INFO 11-14 15:11:23 [file.py:N] message``, on stdout)
  and uvicorn's (``INFO:     Application startup complete.``, on stderr). The server logs
  ``Starting vLLM API server 0 on http://H:P`` just before it listens, as vLLM does.
- Unknown flags: argparse's error and exit 2, as vLLM's FlexibleArgumentParser.
- SIGTERM/SIGINT: stops and exits 0, while loading too (real vLLM raises
  KeyboardInterrupt during loading; its exit status then is unverified). If the engine
  core dies, the server logs an error and exits 1 (vLLM's client shuts down on engine
  death; exact behaviour unverified).

Routes (``vllm/entrypoints/...`` routers)
- ``GET /health`` → 200, empty body; ``GET|POST /ping`` → 200; ``GET /version`` →
  ``{"version": "0.33.0"}``; ``GET /load`` → ``{"server_load": n}`` (n counts in-flight
  requests only with ``--enable-server-load-tracking``, else 0, as in vLLM).
- ``GET /v1/models``: one ``ModelCard`` per served name: ``id, object "model", created,
  owned_by "vllm", root (MODEL), parent null, max_model_len, permission [ModelPermission]``.
- ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``: the echo provider's
  answers; an unknown model is 404 ``The model `x` does not exist.`` (``NotFoundError``).
  Errors use vLLM's ``{"error": {"message", "type", "param", "code"}}``; unknown routes
  FastAPI's ``{"detail": "Not Found"}``.
- ``--api-key`` (or ``VLLM_API_KEY``): ``Authorization: Bearer`` required on paths starting
  ``/v1``, ``/v2``, ``/inference``, ``/cohere`` only, else 401 ``{"error": "Unauthorized"}``
  (``AuthenticationMiddleware``).
- ``GET /metrics``: Prometheus text with ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` and
  ``vllm:engine_sleep_state{sleep_state="awake"|"weights_offloaded"|"discard_all"}``
  (labels ``engine``, ``model_name``; ``vllm/v1/metrics/loggers.py``).

Sleep mode (``vllm/entrypoints/serve/sleep/api_router.py``, ``v1/engine/core.py``,
``v1/executor/abstract.py``, ``v1/worker/gpu_worker.py``)
- The routes exist only when ``VLLM_SERVER_DEV_MODE`` is a true integer (else 404).
- ``POST /sleep?level=N`` (default 1; ``mode`` accepted and ignored: echo requests finish at
  once) answers **200 with an empty body**, as vLLM's router does (``PROVIDERS.md`` says
  ``{"status":"sleeping","level":N}``; no vLLM source found returns that). It pauses
  scheduling, then level 1 shrinks the child's GPU memory to ``residual_mib`` and holds
  ``host_mib`` of real host RAM (every page touched), level >= 2 shrinks without host RAM,
  level 0 only pauses. Asleep already: a no-op, 200 ("Executor is already sleeping.").
- **Without ``--enable-sleep-mode`` vLLM does not refuse**: nothing checks the flag; the
  worker's ``CuMemAllocator`` owns no memory, so sleep frees nothing, answers 200, and
  ``/is_sleeping`` says true. This fake does the same: 200, asleep, GPU memory unchanged.
- ``POST /wake_up`` → 200, empty body: grows back to the requested bytes (gpu_holder's
  ``allocate`` from the residual), frees the host RAM, resumes scheduling. No room on the
  device: 500 ``Call to wake_up method failed: CUDA Error: out of memory ...`` and it stays
  asleep at the residual (vLLM returns a utility-call failure; body shape unverified).
  Awake already: 200 ("Executor is not sleeping."). ``tags`` are accepted but every wake
  is a full wake (partial wakes are not modelled).
- ``GET /is_sleeping`` → ``{"is_sleeping": bool}``.
- While asleep, inference requests *wait* (counted in ``vllm:num_requests_waiting``) and
  are answered after ``/wake_up``: current vLLM pauses the scheduler on sleep
  ("New generation/encoding requests will not be scheduled until resume",
  ``AsyncLLM.pause_generation``). Older vLLM crashed the engine instead (issue #15483); the
  503 ``ModelSleepingError`` in one docs revision came from PR #16536, which was closed.
  ``/health``, ``/v1/models`` and ``/metrics`` answer normally while asleep.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from helixd.providers.echo import EchoConfig, EchoError, EchoServer, read_body
from tests.fakes.gpu_holder import (
    MIB,
    NoDevice,
    allocate,
    device_lock,
    free_bytes,
    register,
    visible_device,
)

VERSION = "0.33.0"
NVML_DIR_ENV = "HELIXD_FAKE_NVML_DIR"  # the fake NVML's state directory (tests/fakes/nvml)
GIB = 1024 * MIB
DEFAULT_UTILIZATION = 0.92  # vLLM 0.33's --gpu-memory-utilization default
ENGINE = "EngineCore_DP0"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GUARDED_PREFIX = ("/v1", "/v2", "/inference", "/cohere")  # AuthenticationMiddleware's
ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


def log(level: str, where: str, message: str, proc: str = "APIServer") -> None:
    """One line in vLLM's log format, on stdout like vLLM's default handler."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"({proc} pid={os.getpid()}) {level} {stamp} [{where}] {message}", flush=True)


def uvicorn(message: str) -> None:
    """One line in uvicorn's default format, on stderr like uvicorn's."""
    print(f"INFO:     {message}", file=sys.stderr, flush=True)


def gib(value: float) -> float:
    """vLLM's ``format_gib``: bytes as GiB rounded to 2 decimals."""
    return round(value / GIB, 2)


@dataclass
class ModelFile:
    """What the fake learns from MODEL: how it loads, offloads and wakes."""

    load_seconds: float = 0.0
    host_mib: float = 32.0
    residual_mib: float = 512.0
    wake_seconds: float = 0.0
    max_model_len: int = 4096

    @classmethod
    def read(cls, spec: str) -> ModelFile:
        # Any string is a valid MODEL for vLLM (a Hub id or a path); only a JSON file here
        # carries figures, anything else gets the defaults.
        try:
            data = json.loads(Path(spec).read_text())
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        model = cls()
        for key in ("load_seconds", "host_mib", "residual_mib", "wake_seconds"):
            if key in data:
                setattr(model, key, float(data[key]))
        if "max_model_len" in data:
            model.max_model_len = int(data["max_model_len"])
        return model


@dataclass
class EngineConfig:
    """What the engine-core child needs, passed to it as JSON on its command line."""

    model: str
    state_dir: str
    device: int
    utilization: float
    enable_sleep_mode: bool
    load_seconds: float
    wake_seconds: float
    host_mib: float
    residual_mib: float


# -- the engine-core child -------------------------------------------------------------


class Terminated(BaseException):
    """SIGTERM in the engine core; a BaseException apart from allocate's SystemExit(1)."""


def terminate(signum: int, frame: Any) -> None:
    raise Terminated


class EngineCore:
    """The child process: owns the GPU memory and the offloaded weights."""

    def __init__(self, config: EngineConfig, replies: Any) -> None:
        self.config = config
        self.replies = replies
        self.procs = Path(config.state_dir) / "procs"
        self.index = config.device
        _, self.total = free_bytes(self.index)
        self.want = math.ceil(self.total * config.utilization)  # request_memory's ceil
        self.residual = min(int(config.residual_mib * MIB), self.want)
        self.held = 0
        self.sleeping = False
        self.host: bytearray | None = None

    def log(self, level: str, where: str, message: str) -> None:
        log(level, where, message, proc=ENGINE)

    def reply(self, **fields: Any) -> None:
        self.replies.write(json.dumps(fields) + "\n")
        self.replies.flush()

    def fail(self, error: str) -> int:
        self.log("ERROR", "core.py:866", "EngineCore failed to start.")
        print("Traceback (most recent call last):", file=sys.stderr)
        print('  File "vllm/v1/engine/core.py", line 857, in run_engine_core', file=sys.stderr)
        print(error, file=sys.stderr, flush=True)
        self.reply(ok=False, error=error)
        return 1

    def start(self) -> int:
        self.log(
            "INFO",
            "core.py:93",
            f"Initializing a V1 LLM engine (v{VERSION}) with config: "
            f"model='{self.config.model}', gpu_memory_utilization={self.config.utilization}, "
            f"enable_sleep_mode={self.config.enable_sleep_mode}",
        )
        free, _ = free_bytes(self.index)
        if free < self.want:
            return self.fail(
                f"ValueError: Free memory on device cuda:0 ({gib(free)}/{gib(self.total)} GiB) "
                f"on startup is less than desired GPU memory utilization "
                f"({self.config.utilization}, {gib(self.want)} GiB). Decrease GPU memory "
                f"utilization or reduce GPU memory used by other processes."
            )
        started = time.monotonic()
        try:
            allocate(self.procs, self.index, self.want, self.config.load_seconds)
        except SystemExit:  # allocate printed CUDA's out-of-memory line
            return self.fail("torch.OutOfMemoryError: CUDA out of memory.")
        self.held = self.want
        took = time.monotonic() - started
        self.log("INFO", "gpu_model_runner.py:2653", f"Model loading took {took:.6f} seconds")
        kv = max(self.want - self.residual, 0)
        self.log("INFO", "gpu_worker.py:298", f"Available KV cache memory: {kv / GIB:.2f} GiB")
        self.log(
            "INFO",
            "core.py:210",
            f"init engine (profile, create kv cache, warmup model) took {took:.2f} seconds",
        )
        self.reply(ok=True, total=self.total, requested=self.want)
        return 0

    def sleep(self, level: int) -> dict[str, Any]:
        if self.sleeping:
            self.log("WARNING", "abstract.py:301", "Executor is already sleeping.")
            return {"ok": True}
        before, _ = free_bytes(self.index)
        # Without --enable-sleep-mode nothing is in CuMemAllocator's pool: nothing to free.
        if self.config.enable_sleep_mode:
            with device_lock(self.procs):
                register(self.procs, self.index, self.residual)
            self.held = self.residual
            if level == 1:  # weights backed up in CPU RAM; level 2 discards them
                self.host = bytearray(int(self.config.host_mib * MIB))
                self.host[::4096] = b"\x01" * len(range(0, len(self.host), 4096))  # page in
        self.sleeping = True
        after, total = free_bytes(self.index)
        self.log(
            "INFO",
            "gpu_worker.py:144",
            f"Sleep mode freed {(after - before) / GIB:.2f} GiB "
            f"memory, {(total - after) / GIB:.2f} GiB memory is still in use.",
        )
        return {"ok": True}

    def wake_up(self) -> dict[str, Any]:
        if not self.sleeping:
            self.log("WARNING", "abstract.py:313", "Executor is not sleeping.")
            return {"ok": True}
        started = time.monotonic()
        if self.config.enable_sleep_mode:
            try:
                allocate(self.procs, self.index, self.want, self.config.wake_seconds, self.held)
            except SystemExit:
                with device_lock(self.procs):  # give back what the failed wake mapped
                    register(self.procs, self.index, self.held)
                error = (
                    "Call to wake_up method failed: CUDA Error: out of memory at "
                    "/workspace/csrc/cumem_allocator.cpp:62"
                )
                self.log("ERROR", "core.py:1120", error)
                return {"ok": False, "error": error}
            self.held = self.want
        self.host = None  # the CPU copy of the weights goes
        self.sleeping = False
        took = time.monotonic() - started
        self.log("INFO", "abstract.py:325", f"It took {took:.6f} seconds to wake up tags None.")
        return {"ok": True}

    def serve(self) -> int:
        for line in sys.stdin:  # EOF: the API server went away, and so do we
            command = json.loads(line)
            if command["op"] == "sleep":
                self.reply(**self.sleep(int(command["level"])))
            elif command["op"] == "wake_up":
                self.reply(**self.wake_up())
        return 0


def engine_core_main(argv: list[str]) -> int:
    config = EngineConfig(**json.loads(argv[0]))
    replies = os.fdopen(int(argv[1]), "w")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the server's to handle
    signal.signal(signal.SIGTERM, terminate)  # vLLM shuts its engine core down with SIGTERM
    try:
        engine = EngineCore(config, replies)
        status = engine.start()
        return status if status else engine.serve()
    except Terminated:
        return 0


# -- the API server ----------------------------------------------------------------------


class EngineDead(Exception):
    """The engine-core child exited or closed its pipe."""


class EngineClient:
    """The server's side of the engine core: spawn it, send commands, read replies."""

    def __init__(self, process: asyncio.subprocess.Process, replies: asyncio.StreamReader) -> None:
        self.process = process
        self.replies = replies
        self.lock = asyncio.Lock()  # one command at a time, like vLLM's utility calls

    @classmethod
    async def spawn(cls, config: EngineConfig) -> EngineClient:
        read_fd, write_fd = os.pipe()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            "_engine_core",
            json.dumps(asdict(config)),
            str(write_fd),
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        loop = asyncio.get_running_loop()
        replies = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(replies)
        await loop.connect_read_pipe(lambda: protocol, os.fdopen(read_fd, "rb"))
        return cls(process, replies)

    async def read_reply(self) -> dict[str, Any]:
        line = await self.replies.readline()
        if not line:
            raise EngineDead("engine core closed its pipe")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        async with self.lock:
            try:
                self.process.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
                await self.process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                raise EngineDead("engine core is gone") from None
            return await self.read_reply()

    async def shutdown(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # EOF ends an idle engine core's command loop
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()  # and SIGTERM one that is still loading
        try:
            async with asyncio.timeout(5):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class FakeVllm(EchoServer):
    """vLLM's HTTP API over the echo answers, with the engine core behind it."""

    def __init__(self, args: argparse.Namespace, model: ModelFile, engine: EngineClient) -> None:
        names: list[str] = args.served_model_name or [args.model_tag]
        super().__init__(EchoConfig(host=args.host or "", port=args.port, models=names))
        self.args = args
        self.model = model
        self.engine = engine
        self.created = int(time.time())
        self.level = 0  # the sleep level; 0 = awake (or merely paused)
        self.sleeping = False  # what /is_sleeping says (the executor's flag)
        self.scheduling = asyncio.Event()  # cleared while paused: requests wait
        self.scheduling.set()
        self.transition = asyncio.Lock()  # sleep and wake_up one at a time
        self.running = 0
        self.waiting = 0

    def check_model(self, body: dict[str, Any], *, ollama: bool = False) -> str:
        model = body.get("model")
        if model is None:  # vLLM serves its first served name for a request without one
            return self.config.models[0]
        if not isinstance(model, str) or model not in self.config.models:
            raise EchoError(404, f"The model `{model}` does not exist.", "NotFoundError")
        return model

    # -- plain routes --------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def server_load(self, request: web.Request) -> web.Response:
        load = self.running + self.waiting if self.args.enable_server_load_tracking else 0
        return web.json_response({"server_load": load})

    async def openai_models(self, request: web.Request) -> web.Response:
        def card(name: str) -> dict[str, Any]:
            permission = {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": self.created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
            return {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": self.args.model_tag,
                "parent": None,
                "max_model_len": self.args.max_model_len or self.model.max_model_len,
                "permission": [permission],
            }

        return web.json_response({"object": "list", "data": [card(n) for n in self.config.models]})

    async def metrics(self, request: web.Request) -> web.Response:
        labels = f'engine="0",model_name="{self.config.models[0]}"'
        states = {
            "awake": 0 if self.sleeping else 1,
            "weights_offloaded": int(self.sleeping and self.level == 1),
            "discard_all": int(self.sleeping and self.level >= 2),
        }
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {float(self.running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {float(self.waiting)}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} 0.0",
            "# HELP vllm:engine_sleep_state Engine sleep state; awake = 0 means engine is "
            "sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep "
            "level 1; discard_all = 1 means sleep level 2.",
            "# TYPE vllm:engine_sleep_state gauge",
            *(
                f'vllm:engine_sleep_state{{{labels},sleep_state="{state}"}} {float(value)}'
                for state, value in states.items()
            ),
        ]
        text = "\n".join(lines) + "\n"
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    # -- inference: waits while the scheduler is paused -----------------------------------

    async def scheduled(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.check_model(await read_body(request))  # validation happens before scheduling
        if not self.scheduling.is_set():
            self.waiting += 1
            try:
                await self.scheduling.wait()
            finally:
                self.waiting -= 1
        self.running += 1
        try:
            return await handler(request)  # aiohttp cached the body: the handler reads it again
        finally:
            self.running -= 1

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self.scheduled(request, self.chat_completions)

    async def completion(self, request: web.Request) -> web.StreamResponse:
        return await self.scheduled(request, self.completions)

    async def embedding(self, request: web.Request) -> web.StreamResponse:
        return await self.scheduled(request, self.embeddings)

    # -- sleep mode ----------------------------------------------------------------------

    async def sleep(self, request: web.Request) -> web.Response:
        try:
            level = int(request.query.get("level", "1"))
        except ValueError as exc:
            raise EchoError(400, str(exc)) from None
        async with self.transition:
            self.scheduling.clear()  # EngineCore.sleep pauses the scheduler first
            if level >= 1 and not self.sleeping:
                started = time.monotonic()
                reply = await self.engine.call("sleep", level=level)
                if not reply["ok"]:
                    raise EchoError(500, str(reply["error"]))
                self.level, self.sleeping = level, True
                log(
                    "INFO",
                    "abstract.py:306",
                    f"It took {time.monotonic() - started:.6f} seconds to fall asleep.",
                )
            elif self.sleeping:
                log("WARNING", "abstract.py:301", "Executor is already sleeping.")
        return web.Response(status=200)

    async def wake_up(self, request: web.Request) -> web.Response:
        tags = request.query.getall("tags", [])
        log("INFO", "api_router.py:42", f"wake up the engine with tags: {tags or None}")
        async with self.transition:
            if self.sleeping:
                reply = await self.engine.call("wake_up")
                if not reply["ok"]:
                    raise EchoError(500, str(reply["error"]))  # still asleep
                self.level, self.sleeping = 0, False
            self.scheduling.set()  # resume_scheduler: queued requests go
        return web.Response(status=200)

    async def is_sleeping(self, request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.sleeping})


@web.middleware
async def vllm_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors in vLLM's shapes: ``ErrorResponse`` for the API, FastAPI's for routing."""
    try:
        return await handler(request)
    except EchoError as exc:
        kind = ERROR_TYPES.get(exc.status, "BadRequestError")
        error = {"message": exc.message, "type": kind, "param": None, "code": exc.status}
        return web.json_response({"error": error}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"detail": exc.reason}, status=exc.status)
    except Exception as exc:
        traceback.print_exc()
        error = {"message": str(exc), "type": "InternalServerError", "param": None, "code": 500}
        return web.json_response({"error": error}, status=500)


def authentication(keys: list[str]) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" and request.path.startswith(GUARDED_PREFIX):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or token not in keys:
                return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    return check


def dev_mode() -> bool:
    # vllm.envs: bool(int(os.getenv("VLLM_SERVER_DEV_MODE", "0")))
    with contextlib.suppress(ValueError):
        return bool(int(os.environ.get("VLLM_SERVER_DEV_MODE", "0")))
    return False


def create_app(server: FakeVllm, api_keys: list[str]) -> web.Application:
    middlewares = [vllm_errors] + ([authentication(api_keys)] if api_keys else [])
    app = web.Application(middlewares=middlewares)
    app.add_routes(
        [
            web.get("/health", server.health),
            web.get("/ping", server.ping),
            web.post("/ping", server.ping),
            web.get("/version", server.version),
            web.get("/load", server.server_load),
            web.get("/metrics", server.metrics),
            web.get("/v1/models", server.openai_models),
            web.post("/v1/chat/completions", server.chat),
            web.post("/v1/completions", server.completion),
            web.post("/v1/embeddings", server.embedding),
        ]
    )
    if dev_mode():  # sleep/router.attach_router: only in dev mode
        app.add_routes(
            [
                web.post("/sleep", server.sleep),
                web.post("/wake_up", server.wake_up),
                web.get("/is_sleeping", server.is_sleeping),
            ]
        )
    return app


def bind_early(host: str | None, port: int) -> socket.socket:
    """vLLM's ``create_server_socket``: bound now, listening only once the engine is up."""
    address = host or ""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family=family, type=socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def pick_device() -> tuple[str, int]:
    """The fake NVML directory and the NVML index CUDA device 0 maps to; RuntimeError if none."""
    state = os.environ.get(NVML_DIR_ENV)
    if not state:
        raise RuntimeError(
            "Failed to infer device type, please set the environment variable "
            "`VLLM_LOGGING_LEVEL=DEBUG` to turn on verbose logging to help debug the issue."
        )
    try:
        devices = json.loads((Path(state) / "devices.json").read_text())
        index = visible_device(devices)
    except (NoDevice, FileNotFoundError):
        raise RuntimeError("No CUDA GPUs are available") from None
    (Path(state) / "procs").mkdir(parents=True, exist_ok=True)
    return state, index


async def wait_first(*aws: Awaitable[Any]) -> set[asyncio.Task[Any]]:
    tasks = {asyncio.ensure_future(a) for a in aws}
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return done


async def serve(args: argparse.Namespace, model: ModelFile) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log("INFO", "api_server.py:1885", f"vLLM API server version {VERSION}")
    log("INFO", "utils.py:253", f"non-default args: {{'model_tag': '{args.model_tag}'}}")
    try:
        state, index = pick_device()
    except RuntimeError as exc:
        print(f"RuntimeError: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        sock = bind_early(args.host, args.port)
    except OSError as exc:
        print(f"OSError: {exc}", file=sys.stderr, flush=True)
        return 1
    config = EngineConfig(
        model=args.model_tag,
        state_dir=state,
        device=index,
        utilization=args.gpu_memory_utilization,
        enable_sleep_mode=args.enable_sleep_mode,
        load_seconds=model.load_seconds,
        wake_seconds=model.wake_seconds,
        host_mib=model.host_mib,
        residual_mib=model.residual_mib,
    )
    engine = await EngineClient.spawn(config)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        ready = asyncio.ensure_future(engine.read_reply())
        done, _ = await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping in done:
            ready.cancel()
            return 0
        try:
            reply = ready.result()
        except EngineDead:
            reply = {"ok": False}
        if not reply["ok"]:
            print(
                "RuntimeError: Engine core initialization failed. See root cause above. "
                f"Failed core proc(s): {{'{ENGINE}': {engine.process.pid}}}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        keys = args.api_key or (
            [os.environ["VLLM_API_KEY"]] if "VLLM_API_KEY" in os.environ else []
        )
        server = FakeVllm(args, model, engine)
        runner = web.AppRunner(create_app(server, keys), access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        host = f"[{args.host}]" if args.host and ":" in args.host else args.host or "0.0.0.0"
        port = sock.getsockname()[1]
        log("INFO", "api_server.py:1954", f"Starting vLLM API server 0 on http://{host}:{port}")
        try:
            uvicorn(f"Started server process [{os.getpid()}]")
            uvicorn("Waiting for application startup.")
            await web.SockSite(runner, sock).start()  # listen(): connections are accepted now
            uvicorn("Application startup complete.")
            died = asyncio.ensure_future(engine.process.wait())
            done = await wait_first(stopping, died)
            if stopping not in done:
                log(
                    "ERROR",
                    "core_client.py:564",
                    f"Engine core proc {ENGINE} died unexpectedly, shutting down client.",
                )
                return 1
            uvicorn("Shutting down")
            return 0
        finally:
            await runner.cleanup()
            uvicorn("Application shutdown complete.")
            uvicorn(f"Finished server process [{os.getpid()}]")
    finally:
        stopping.cancel()
        await engine.shutdown()
        sock.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm")
    commands = parser.add_subparsers(dest="subcommand", required=True)
    cli = commands.add_parser("serve", help="Start the vLLM OpenAI Compatible API server.")
    cli.add_argument("model_tag", help="the model: a path or a Hub id (here: a model file)")
    cli.add_argument("--host", default=None, help="host name (default: all interfaces)")
    cli.add_argument("--port", type=int, default=8000, help="port number")
    cli.add_argument("--served-model-name", nargs="+", default=None, help="model name(s)")
    cli.add_argument("--gpu-memory-utilization", type=float, default=DEFAULT_UTILIZATION)
    cli.add_argument("--enable-sleep-mode", action="store_true", help="enable sleep mode")
    cli.add_argument("--api-key", nargs="+", default=None, help="require one of these keys")
    cli.add_argument("--max-model-len", type=int, default=None, help="model context length")
    cli.add_argument("--enable-server-load-tracking", action="store_true")
    args = parser.parse_args(argv)
    if not 0 < args.gpu_memory_utilization <= 1:
        parser.error("--gpu-memory-utilization must be in (0, 1]")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["_engine_core"]:
        return engine_core_main(argv[1:])
    args = parse_args(argv)
    return asyncio.run(serve(args, ModelFile.read(args.model_tag)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
