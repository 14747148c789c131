"""A fake llama.cpp ``llama-server``: its CLI, start-up and HTTP API, on fake GPUs.

    python tests/fakes/llama_server.py -m MODEL [--host H] [--port P] [-c CTX] [-ngl N]
        [-a ALIAS] [-np N] [-t N] [--api-key K] [--embeddings] [--metrics]

Long forms ``--model``, ``--ctx-size``, ``--n-gpu-layers`` (``--gpu-layers``), ``--alias``,
``--parallel`` work too, and so do llama.cpp's environment variables ``LLAMA_ARG_MODEL``,
``LLAMA_ARG_HOST``, ``LLAMA_ARG_PORT``, ``LLAMA_ARG_CTX_SIZE``, ``LLAMA_ARG_N_GPU_LAYERS``,
``LLAMA_ARG_ALIAS``, ``LLAMA_ARG_N_PARALLEL`` and ``LLAMA_API_KEY`` (flags win).

MODEL is a JSON *model file* like gpu_holder's: ``{"mib": N, "load_seconds": S}``, plus
optional ``"n_ctx_train"`` (default 4096) and ``"n_params"`` for ``/v1/models``.

What it follows (ggml-org/llama.cpp ``tools/server/server-http.cpp``, ``server-context.cpp``,
``server-common.cpp``, ``ggml/src/ggml-cuda``, read through the code search in November
2026, and ``shared/PROVIDERS.md``), checked since against the real ``llama-server`` built
from the llama.cpp that llama-cpp-python 0.3.36 vendors (CPU only: ``make llama-server``;
``tests/e2e/test_llama_server_real.py``); "unverified" marks what that build could not
confirm (the CUDA lines):

- The HTTP server listens *at once*, before the model loads (server.cpp: "start the HTTP
  server before loading the model to be able to serve /health requests"). Until the model
  is loaded, **every** request gets 503 ``{"error": {"code": 503, "message": "Loading
  model", "type": "unavailable_error"}}`` (``middleware_server_state``: "no endpoints are
  allowed to be accessed when the server is not ready"), except ``/`` and ``*.html``, which
  get an HTML loading page with 503 (a build with the web UI, as released; one without it,
  as ``make llama-server`` builds, answers 404 there, loading or not). Then ``GET
  /health`` (and ``/v1/health``) → 200 ``{"status": "ok"}``.
- GPU: with ``-ngl`` other than 0 (the default, -1, is llama.cpp's "auto": all layers) and a
  visible device (gpu_holder's ``visible_device``), the model's MiB are allocated on the
  GPU *at once*, the way ggml allocates a model buffer in one ``cudaMalloc``, and the
  weights then load for ``load_seconds``. Partial offload is not modelled: any ``-ngl`` but
  0 puts the whole model on the GPU, and the KV cache adds nothing. No room: the ggml and
  llama.cpp lines, ``ggml_backend_cuda_buffer_type_alloc_buffer: allocating N MiB on device
  0: cudaMalloc failed: out of memory``, ``alloc_tensor_range: failed to allocate CUDA0
  buffer of size B``, ``llama_model_load: error loading model: unable to allocate CUDA0
  buffer``, …, ``llama_server: exiting due to model loading error``, and exit 1
  (unverified). ``-ngl 0``, no visible device or no fake NVML: the model runs on the CPU
  and holds nothing on the GPU.
- A model file that is missing or not a model: ``gguf_init_from_file: failed to open GGUF
  file '…' (No such file or directory)`` or ``gguf_init_from_reader: invalid magic
  characters: 'xxxx', expected 'GGUF'``, then ``llama_model_load: error loading model: …``
  — all twice, as llama.cpp reads the file once to fit its parameters to free memory —
  ``common_init_: failed to load model '…'``, ``exiting due to model loading error``, exit
  1 (after the port listened, as in llama.cpp).
- ``GET /v1/models`` (and ``/models``): llama.cpp's single-model answer, an Ollama-style
  ``models`` list and ``{"object": "list", "data": [{"id": alias or model path, "aliases"
  (the id, alias or not), "tags", "object": "model", "created", "owned_by": "llamacpp",
  "meta": {"vocab_type", "n_vocab", "n_ctx", "n_ctx_train", "n_embd", "n_params", "size",
  "ftype"}}]}`` (``size`` in bytes).
- ``GET /props``: ``default_generation_settings {n_ctx, params}``, ``total_slots``,
  ``model_alias``, ``model_path``, ``modalities``, ``endpoint_*``, ``build_info``,
  ``is_sleeping`` (always false: ``--sleep-idle-seconds`` is not modelled). ``GET /slots``:
  one entry per slot with ``id``, ``n_ctx``, ``speculative``, ``is_processing`` (``id_task``
  and the task's fields only once the slot ran one). ``-np`` defaults to 4 with a unified
  KV cache (each slot gets the whole context; llama.cpp's "auto"); an explicit ``-np N``
  gives each slot its share of ``-c``, padded up to a multiple of 256 (kv_unified off), or
  the whole training context without ``-c``. A slot never gets more than the model's
  training context, whatever ``-c`` says.
- Inference: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` (and their
  un-prefixed aliases) answer with the echo provider; the request's ``model`` is not
  checked (one model serves any name) and the answer names the server's own model (its
  alias or path), not the one asked for. After a streamed answer the server closes the
  connection, although its headers said ``Keep-Alive: timeout=5, max=100`` and no
  ``Connection: close``; after a whole answer it keeps it. Embeddings need
  ``--embeddings``, else 501 ``This server does not support embeddings. Start it with
  `--embeddings``` — as llama.cpp.
  ``/metrics`` needs ``--metrics`` likewise.
- ``--api-key``: ``Authorization: Bearer K`` or ``X-Api-Key: K`` on everything but
  ``/health``, ``/v1/health``, ``/models``, ``/v1/models`` and ``/``; else 401 ``{"error":
  {"message": "Invalid API Key", "type": "authentication_error", "code": 401}}``. The
  loading check comes first, so a loading server answers 503 even without a key.
- Errors: ``{"error": {"code", "message", "type"}}``; unknown routes 404 ``File Not Found``.
- Unknown flags: ``error: invalid argument: X`` and exit 1 (common/arg.cpp). Without ``-m``
  llama-server starts its router mode, which this fake does not model: it exits 1.
- Logs go to stderr, each line prefixed with the time since start and a level, as
  llama.cpp's common_log writes them (``0.00.006.346 E gguf_init_from_reader: …``);
  ``warning: no usable GPU found, --gpu-layers option will be ignored`` (for an explicit
  ``-ngl``) comes unprefixed, before the log starts. SIGTERM/SIGINT once loaded: exits 0;
  while loading (llama-server installs its handlers only after the load) the signal kills
  it, with no last words.
- Not llama.cpp: SIGUSR1 wedges the server the way a lost CUDA context does: ``/health``
  still answers 200, every generation answers 500 ``CUDA error: an illegal memory access
  was encountered`` until the process is restarted (for helixd's inference health check).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from helixd.providers.echo import EchoConfig, EchoError, EchoServer
from tests.fakes.gpu_holder import MIB, NoDevice, allocate, free_bytes, visible_device

NVML_DIR_ENV = "HELIXD_FAKE_NVML_DIR"  # the fake NVML's state directory (tests/fakes/nvml)
BUILD = "b7100-fake"
AUTO = -1  # -ngl auto/all: every layer on the GPU
DEFAULT_SLOTS = 4  # -np auto
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC = {"/health", "/v1/health", "/models", "/v1/models", "/"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}
LOADING_HTML = "<html><body>Loading model…</body></html>"


STARTED = time.monotonic()


def log(message: str, level: str = "I") -> None:
    """One line as llama.cpp's common_log writes it: time since start, level, text."""
    t = time.monotonic() - STARTED
    us = int(t * 1_000_000)
    stamp = f"{us // 60_000_000}.{us // 1_000_000 % 60:02d}.{us // 1000 % 1000:03d}.{us % 1000:03d}"
    print(f"{stamp} {level} {message}", file=sys.stderr, flush=True)


def plain(message: str) -> None:
    """A line llama.cpp prints before its log starts (argument warnings), unprefixed."""
    print(message, file=sys.stderr, flush=True)


class ArgError(Exception):
    """A command line llama.cpp would refuse."""


class LlamaArgs(argparse.ArgumentParser):
    """llama.cpp's parser refuses with ``error: …`` and status 1, not argparse's 2."""

    def error(self, message: str) -> NoReturn:
        raise ArgError(message)


def gpu_layers(value: str) -> int:
    if value in ("auto", "all", "-1"):
        return AUTO
    layers = int(value)
    if layers < 0:
        raise argparse.ArgumentTypeError(f"invalid value: {value}")
    return layers


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    parser = LlamaArgs(prog="llama-server", add_help=False)
    parser.add_argument("-m", "--model", default=env("LLAMA_ARG_MODEL"))
    parser.add_argument("--host", default=env("LLAMA_ARG_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("LLAMA_ARG_PORT", "8080")))
    parser.add_argument("-c", "--ctx-size", type=int, default=int(env("LLAMA_ARG_CTX_SIZE", "0")))
    parser.add_argument(
        "-ngl",
        "--n-gpu-layers",
        "--gpu-layers",
        dest="n_gpu_layers",
        type=gpu_layers,
        default=gpu_layers(env("LLAMA_ARG_N_GPU_LAYERS", "auto")),
    )
    parser.add_argument("-a", "--alias", default=env("LLAMA_ARG_ALIAS"))
    parser.add_argument("-np", "--parallel", type=int, default=None)
    parser.add_argument("--api-key", action="append", default=None)
    parser.add_argument("--embedding", "--embeddings", dest="embeddings", action="store_true")
    parser.add_argument("--metrics", action="store_true")
    parser.add_argument("-t", "--threads", type=int, default=-1)  # accepted, not modelled
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ArgError(f"invalid argument: {unknown[0]}")
    if args.parallel is None and env("LLAMA_ARG_N_PARALLEL"):
        args.parallel = int(env("LLAMA_ARG_N_PARALLEL", "1"))
    if args.api_key is None and env("LLAMA_API_KEY"):
        args.api_key = [env("LLAMA_API_KEY")]
    return args


@dataclass
class Model:
    """What the model file says, and what llama.cpp would read from a GGUF header."""

    mib: float
    load_seconds: float
    n_ctx_train: int
    n_params: int

    @property
    def size(self) -> int:
        return int(self.mib * MIB)


class LoadFailed(Exception):
    """The model did not load; the lines llama.cpp prints say why."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(lines[-1] if lines else "failed to load model")
        self.lines = lines


def read_model(path: str) -> Model:
    loader = f"llama_model_loader: failed to load model from {path}"
    failed = f"llama_model_load: error loading model: {loader}"
    # llama.cpp reads the file twice: once to fit the parameters to free device memory
    # (a failure there is only logged), then to load it.
    once = [failed, "llama_model_load_from_file_impl: failed to load model"]
    fit = (
        "common_fit_params: encountered an error while trying to fit params to free device "
        "memory: failed to load model"
    )
    tail = [
        f"cmn  common_init_: failed to load model '{path}'",
        f"srv    load_model: failed to load model, '{path}'",
    ]
    raw = b""
    try:
        raw = Path(path).read_bytes()
        data = json.loads(raw)
        mib = float(data["mib"])
    except FileNotFoundError:
        why = f"gguf_init_from_file: failed to open GGUF file '{path}' (No such file or directory)"
        raise LoadFailed([why, *once, fit, why, *once, *tail]) from None
    except (OSError, ValueError, TypeError, KeyError):
        magic = raw[:4].decode("latin-1")
        why = (
            f"gguf_init_from_reader: invalid magic characters: '{magic}', expected 'GGUF'"
            if len(magic) == 4
            else "gguf_init_from_reader: failed to read magic"
        )
        raise LoadFailed([why, *once, fit, why, *once, *tail]) from None
    n_params = int(data.get("n_params", mib * MIB * 2))  # ~4 bits a weight, as a Q4 GGUF
    load_seconds = float(data.get("load_seconds", 0.0))
    return Model(mib, load_seconds, int(data.get("n_ctx_train", 4096)), n_params)


@dataclass
class Gpu:
    """The device the model goes to, as CUDA device 0 sees it."""

    procs: Path
    index: int
    name: str


def find_gpu() -> Gpu | None:
    """The visible device, or None: then llama.cpp runs on the CPU."""
    state = os.environ.get(NVML_DIR_ENV)
    if not state:
        return None
    try:
        devices = json.loads((Path(state) / "devices.json").read_text())
        index = visible_device(devices)
    except (NoDevice, FileNotFoundError):
        return None
    procs = Path(state) / "procs"
    procs.mkdir(parents=True, exist_ok=True)
    return Gpu(procs, index, str(devices[index]["name"]))


def allocate_in_thread(gpu: Gpu, size: int) -> asyncio.Future[bool]:
    """gpu_holder's allocate, off the event loop; the future says whether it fit.

    A daemon thread rather than the default executor: a SIGTERM must not wait for it.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bool] = loop.create_future()

    def settle(fits: bool) -> None:
        if not future.done():
            future.set_result(fits)

    def run() -> None:
        try:
            allocate(gpu.procs, gpu.index, size, 0.0)  # one cudaMalloc for the model buffer
            fits = True
        except SystemExit:  # allocate printed the CUDA out-of-memory line
            fits = False
        with contextlib.suppress(RuntimeError):  # the loop closed: the server stopped meanwhile
            loop.call_soon_threadsafe(settle, fits)

    threading.Thread(target=run, name="load", daemon=True).start()
    return future


class FakeLlama(EchoServer):
    """llama-server's HTTP API over the echo answers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.model_id: str = args.alias or args.model
        super().__init__(EchoConfig(host=args.host, port=args.port, models=[self.model_id]))
        self.args = args
        self.ready = False
        self.model: Model | None = None
        self.slots = args.parallel or DEFAULT_SLOTS
        self.processing = 0
        self.wedged = False
        self.created = int(time.time())

    @property
    def n_ctx(self) -> int:
        """The context llama.cpp allocates: -c (0: the training context), padded to 256;
        with an explicit -np, each slot's share padded to 256, times the slots."""
        assert self.model is not None
        ctx = _pad(self.args.ctx_size) if self.args.ctx_size else self.model.n_ctx_train
        if self.args.parallel and self.args.ctx_size:
            return _pad(ctx // self.slots + (ctx % self.slots > 0)) * self.slots
        if self.args.parallel:
            return ctx * self.slots
        return ctx

    @property
    def slot_n_ctx(self) -> int:
        """Each slot's context: all of it with the unified KV cache (-np auto), its share
        with an explicit -np; never more than the model's training context."""
        assert self.model is not None
        share = self.n_ctx // self.slots if self.args.parallel else self.n_ctx
        return min(share, self.model.n_ctx_train)

    def check_model(self, body: dict[str, Any], *, ollama: bool = False) -> str:
        # One model serves whatever name a request gives, and answers with its own.
        return self.model_id

    async def load(self, gpu: Gpu | None) -> None:
        """Load the model; LoadFailed with llama.cpp's lines when it does not."""
        path = self.args.model
        log(f"srv    load_model: loading model '{path}'")
        model = read_model(path)
        if gpu is not None and self.args.n_gpu_layers != 0:
            free, _ = await asyncio.to_thread(free_bytes, gpu.index)
            log(
                f"llama_model_load_from_file_impl: using device CUDA0 ({gpu.name}) - "
                f"{free // MIB} MiB free"
            )
            if not await allocate_in_thread(gpu, model.size):
                raise LoadFailed(
                    [
                        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating "
                        f"{model.mib:.2f} MiB on device 0: cudaMalloc failed: out of memory",
                        f"alloc_tensor_range: failed to allocate CUDA0 buffer of size {model.size}",
                        "llama_model_load: error loading model: unable to allocate CUDA0 buffer",
                        "llama_model_load_from_file_impl: failed to load model",
                        f"cmn  common_init_: failed to load model '{path}'",
                        f"srv    load_model: failed to load model, '{path}'",
                    ]
                )
            log("load_tensors: offloaded all layers to GPU")
            log(f"load_tensors:        CUDA0 model buffer size = {model.mib:10.2f} MiB")
        else:
            log(f"load_tensors:   CPU_Mapped model buffer size = {model.mib:10.2f} MiB")
        await asyncio.sleep(model.load_seconds)  # reading the weights in
        self.model = model
        unified = "false" if self.args.parallel else "true"
        log(
            f"srv    load_model: initializing, n_slots = {self.slots}, "
            f"n_ctx_slot = {self.slot_n_ctx}, kv_unified = '{unified}'"
        )
        self.ready = True

    # -- routes ---------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(
            text="<html><body>llama.cpp (fake)</body></html>", content_type="text/html"
        )

    def card(self) -> dict[str, Any]:
        assert self.model is not None
        meta = {
            "vocab_type": 2,
            "n_vocab": 32000,
            "n_ctx": self.n_ctx,
            "n_ctx_train": self.model.n_ctx_train,
            "n_embd": 2048,
            "n_params": self.model.n_params,
            "size": self.model.size,
            "ftype": "Q4_K - Medium",
        }
        aliases = [self.model_id]  # the alias, or the model's path: never empty
        return {
            "id": self.model_id,
            "aliases": aliases,
            "tags": [],
            "object": "model",
            "created": self.created,
            "owned_by": "llamacpp",
            "meta": meta,
        }

    async def openai_models(self, request: web.Request) -> web.Response:
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": "",
            "families": [""],
            "parameter_size": "",
            "quantization_level": "",
        }
        ollama = {
            "name": self.model_id,
            "model": self.model_id,
            "modified_at": "",
            "size": "",
            "digest": "",
            "type": "model",
            "description": "",
            "tags": [""],
            "capabilities": ["completion"],
            "parameters": "",
            "details": details,
        }
        return web.json_response({"models": [ollama], "object": "list", "data": [self.card()]})

    async def props(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "default_generation_settings": {
                    "n_ctx": self.slot_n_ctx,
                    "params": {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "n_predict": -1},
                },
                "total_slots": self.slots,
                "model_alias": self.model_id,
                "model_path": self.args.model,
                "model_ftype": "Q4_K - Medium",
                "modalities": {"vision": False, "video": False, "audio": False},
                "endpoint_slots": True,
                "endpoint_props": False,
                "endpoint_metrics": self.args.metrics,
                "chat_template": "",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "build_info": BUILD,
                "is_sleeping": False,
            }
        )

    async def get_slots(self, request: web.Request) -> web.Response:
        # A slot that never ran a task has no id_task (nor the task's fields).
        slots: list[dict[str, Any]] = [
            {
                "id": i,
                "n_ctx": self.slot_n_ctx,
                "speculative": False,
                "is_processing": i < self.processing,
            }
            for i in range(self.slots)
        ]
        for i in range(min(self.processing, self.slots)):
            slots[i]["id_task"] = i
        return web.json_response(slots)

    async def metrics(self, request: web.Request) -> web.Response:
        if not self.args.metrics:
            message = "This server does not support metrics endpoint. Start it with `--metrics`"
            raise EchoError(501, message)
        lines = [
            "# HELP llamacpp:requests_processing Number of requests processing",
            "# TYPE llamacpp:requests_processing gauge",
            f"llamacpp:requests_processing {self.processing}",
            "# HELP llamacpp:requests_deferred Number of requests deferred",
            "# TYPE llamacpp:requests_deferred gauge",
            "llamacpp:requests_deferred 0",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def processing_one(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.wedged:
            log("CUDA error: an illegal memory access was encountered", "E")
            raise EchoError(500, "CUDA error: an illegal memory access was encountered")
        self.processing += 1
        try:
            response = await handler(request)
        finally:
            self.processing -= 1
        if type(response) is web.StreamResponse and request.transport is not None:
            # llama-server closes the connection after a streamed answer, though its
            # headers promise keep-alive (no "Connection: close"): so does the fake.
            request.transport.close()  # after what is buffered has gone out
        return response

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self.processing_one(request, self.chat_completions)

    async def completion(self, request: web.Request) -> web.StreamResponse:
        return await self.processing_one(request, self.completions)

    async def embedding(self, request: web.Request) -> web.StreamResponse:
        if not self.args.embeddings:
            message = "This server does not support embeddings. Start it with `--embeddings`"
            raise EchoError(501, message)
        return await self.processing_one(request, self.embeddings)


def middlewares(server: FakeLlama) -> list[Any]:
    keys: list[str] = server.args.api_key or []

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except EchoError as exc:
            kind = ERROR_TYPES.get(exc.status, "server_error")
            error = {"code": exc.status, "message": exc.message, "type": kind}
            return web.json_response({"error": error}, status=exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # cpp-httplib answers any unrouted request 404, whatever the method.
            error = {"message": "File Not Found", "type": "not_found_error", "code": 404}
            return web.json_response({"error": error}, status=404)

    @web.middleware
    async def pre_routing(request: web.Request, handler: Handler) -> web.StreamResponse:
        # llama.cpp's pre-routing handler: OPTIONS, then the loading state, then the key.
        if request.method == "OPTIONS":
            return web.Response(text="", content_type="text/html")
        if not server.ready:
            if request.path == "/" or request.path.endswith(".html"):
                return web.Response(status=503, text=LOADING_HTML, content_type="text/html")
            error = {"message": "Loading model", "type": "unavailable_error", "code": 503}
            return web.json_response({"error": error}, status=503)
        if keys and request.path not in PUBLIC:
            key = request.headers.get("Authorization", "") or request.headers.get("X-Api-Key", "")
            key = key.removeprefix("Bearer ")
            if key not in keys:
                log("srv  log_server_r: unauthorized: Invalid API Key", "W")
                error = {"message": "Invalid API Key", "type": "authentication_error", "code": 401}
                return web.json_response({"error": error}, status=401)
        return await handler(request)

    return [errors, pre_routing]


def create_app(server: FakeLlama) -> web.Application:
    app = web.Application(middlewares=middlewares(server))
    routes = [
        web.get("/", server.root),
        web.get("/health", server.health),
        web.get("/v1/health", server.health),
        web.get("/models", server.openai_models),
        web.get("/v1/models", server.openai_models),
        web.get("/props", server.props),
        web.get("/slots", server.get_slots),
        web.get("/metrics", server.metrics),
    ]
    for prefix in ("", "/v1"):
        routes += [
            web.post(f"{prefix}/chat/completions", server.chat),
            web.post(f"{prefix}/completions", server.completion),
            web.post(f"{prefix}/embeddings", server.embedding),
        ]
    app.add_routes(routes)
    return app


async def serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    received: list[signal.Signals] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if args.n_gpu_layers not in (0, AUTO) and find_gpu() is None:
        plain("warning: no usable GPU found, --gpu-layers option will be ignored")
        plain("warning: one possible reason is that llama.cpp was compiled without GPU support")
        plain("warning: consult docs/build.md for compilation instructions")
    log("srv  llama_server: initializing ...")
    if not args.api_key:
        log("srv  llama_server: security: no API key is set and CORS allows all origins", "W")
    server = FakeLlama(args)
    loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(server, "wedged", True))
    gpu = find_gpu()
    if gpu is not None:
        log("ggml_cuda_init: found 1 CUDA devices:")
        log(f"  Device 0: {gpu.name}, compute capability 8.9, VMM: yes")
    runner = web.AppRunner(create_app(server), access_log=None, shutdown_timeout=0.25)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, args.host, args.port).start()
        except OSError:
            log(
                f"srv    start: couldn't bind HTTP server socket, hostname: {args.host}, "
                f"port: {args.port}",
                "E",
            )
            log("srv  llama_server: exiting due to HTTP server error", "E")
            return 1
        port = runner.addresses[0][1]
        loading = asyncio.ensure_future(server.load(gpu))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not loading.done():
            # llama-server installs its SIGTERM/SIGINT handlers only once the model is
            # loaded: until then the signal kills it, with no last words.
            die_of(received[0])
        try:
            loading.result()
        except LoadFailed as failed:
            for line in failed.lines:
                log(line, "E")
            log("srv    operator(): operator(): cleaning up before exit...")
            log("srv  llama_server: exiting due to model loading error", "E")
            stopping.cancel()
            return 1
        log("srv  llama_server: model loaded")
        log(f"srv  llama_server: listening on http://{args.host}:{port}")
        await stopping
        log("srv    operator(): operator(): cleaning up before exit...")
        return 0
    finally:
        await runner.cleanup()


def _pad(n: int) -> int:
    """Up to a multiple of 256, as llama.cpp pads context sizes."""
    return -(-n // 256) * 256


def die_of(sig: signal.Signals) -> NoReturn:
    """End as a process without a handler for ``sig`` does: killed by it."""
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    time.sleep(5)  # the signal is on its way
    os._exit(128 + sig)


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except ArgError as exc:
        print(f"error: {exc}\n", file=sys.stderr)
        return 1
    if not args.model:
        print(
            "error: this fake needs -m MODEL (llama-server's router mode is not modelled)",
            file=sys.stderr,
        )
        return 1
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
