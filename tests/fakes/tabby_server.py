"""A fake TabbyAPI (``python main.py``): one model at a time, loaded inside the server.

    python tests/fakes/tabby_server.py [--host 127.0.0.1] [--port 5000] [--model-dir models] \
        [--model-name NAME] [--max-seq-len N] [--cache-size N] [--disable-auth [BOOL]]

TabbyAPI (exllamav3) cannot be installed here, so helixd's TabbyAPI adapter is tested
against this process. It follows theroyallab/tabbyAPI as read in November 2026
(``shared/PROVIDERS.md`` pins e632af4, which the code index did not hold; each file below
names the commit it was read at):

- models (``endpoints/core/utils/model.py`` @6e48bb4): every folder of ``--model-dir`` is
  a model. Each folder here holds a ``fake.json`` ``{"mib": N, "load_seconds": S,
  "max_seq_len": L, "modules": M}`` standing for the exllama weights and ``config.json``
  (only ``mib`` is required).
- start-up (``main.py``): with ``--model-name`` the model loads *before* the API listens,
  so connections are refused meanwhile; a failed start-up load ends the process with
  status 1 (the exception is not caught there; unverified beyond reading).
- memory: exllama loads in-process, so the model's memory is registered under this
  server's own pid with the fake NVML, growing module by module, and removed on unload
  (a real server keeps its CUDA context; the fake keeps nothing). This reuses
  ``gpu_holder``'s ``visible_device``, ``device_lock``, ``free_bytes`` and ``register``;
  not ``allocate``, which sleeps and exits the process on OOM where a server must report
  progress and survive. Too little free memory fails the load with torch's ``CUDA out of
  memory. Tried to allocate ...`` and frees what the attempt held. Without
  ``HELIXD_FAKE_NVML_DIR`` a model "loads" holding nothing, so the fake still serves.
- auth (``common/auth.py`` @f10a5cf): ``api_tokens.yml`` in the working directory; when
  missing it is generated as TabbyAPI does, ``yaml.safe_dump({"api_key", "admin_key"},
  default_flow_style=False)`` with ``secrets.token_hex(16)`` keys (written atomically
  here). API routes take ``x-api-key: K`` or ``Authorization: Bearer K`` (the admin key
  is valid too); admin routes take ``x-admin-key: K`` or ``Authorization: Bearer K``. A
  header that is present but wrong wins over a good other one. Failures are 401
  ``{"detail": "Invalid API key" | "Please provide an API key" | "Invalid admin key" |
  "Please provide an admin key"}`` (FastAPI's ``HTTPException`` body).
  ``--disable-auth`` skips all this.
- ``GET /health`` → ``{"status": "healthy", "issues": []}`` always (``issues`` is from
  the newer ``endpoints/core/types/health.py`` @2cda890; ``endpoints/core/router.py``
  @2c3bc71 and @03189bc send only ``status``).
- ``GET /v1/model`` (api key) → the ModelCard: ``{"id", "object": "model", "created",
  "owned_by": "tabbyAPI", "logging": {...}, "parameters": {"max_seq_len", "rope_scale",
  "rope_alpha", "cache_size", "cache_mode", "chunk_size", "prompt_template",
  "num_experts_per_token", "draft"}}`` (``endpoints/core/types/model.py`` @03189bc); with
  no model, and during a load (the container is ``None`` until loaded;
  ``common/model.py`` @0158fb4): 503 ``{"detail": "No models are currently loaded."}``
  (older releases: 400).
- ``GET /v1/models`` and ``/v1/model/list`` (api key): with the admin key every folder,
  with the api key only the loaded model (``{"object": "list", "data": [ModelCard]}``).
- ``POST /v1/model/load`` (admin) ``{"model_name" | "name", "max_seq_len"?, "cache_size"?,
  ...}``: a missing folder is 400 ``Could not find the model path for load. Check model
  name or config.yml?``, an empty name 400 ``A model name was not provided for load.``,
  no name 422 (pydantic). Otherwise an SSE stream (``text/event-stream``, events ``data:
  {json}`` with sse-starlette's CRLF separators, no pings) of ``{"model_type": "model",
  "module": i, "modules": n, "status": "processing"}`` for i = 1..n, then the same with
  ``"status": "finished"``; a failure is an ``{"error": {"message", "trace": null}}``
  event in the still-200 stream (``common/networking.py`` @0eedc8c). Loads are
  serialised by a global lock; loading another model unloads the current one first;
  loading the loaded model sends one processing and one finished event
  (``load_model_gen``). A client that disconnects cancels its load.
- ``POST /v1/model/unload`` (admin; 503 with no model) → 200 ``null``.
- ``/v1/chat/completions``, ``/v1/completions`` (api key; 503 with no model): answered
  by the echo provider for the loaded model; ``model`` in the request is ignored (inline
  model loading is off by default: ``load_inline_model``, ``endpoints/OAI/utils``) and
  the answer names the loaded model.
- SIGTERM/SIGINT: exit 0, also mid start-up load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from helixd.providers.echo import EchoConfig, EchoError, EchoServer, read_body
from tests.fakes import gpu_holder
from tests.fakes.ollama_server import _write_atomically

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MIB = gpu_holder.MIB
DEFAULT_MODULES = 10  # progress events per load (exllama reports one per module)
DEFAULT_SEQ_LEN = 4096
TOKENS_FILE = "api_tokens.yml"
LOGGING = {"log_prompt": False, "log_generation_params": False, "log_requests": False}


class TabbyHTTPError(Exception):
    """FastAPI's ``HTTPException``: rendered as ``{"detail": ...}``."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail


class LoadError(Exception):
    """A model load that failed; the message goes to the client as TabbyAPI's error."""


@dataclass
class Loaded:
    """The model in the container and the load parameters its card reports."""

    name: str
    held: int  # bytes registered with the fake NVML
    max_seq_len: int
    cache_size: int
    created: int = field(default_factory=lambda: int(time.time()))


class Gpu:
    """This process's memory on the fake NVML device CUDA would give it (device 0)."""

    def __init__(self) -> None:
        state = os.environ.get("HELIXD_FAKE_NVML_DIR")
        self.procs = Path(state) / "procs" if state else None

    def device(self) -> int:
        assert self.procs is not None
        devices = json.loads((self.procs.parent / "devices.json").read_text())
        try:
            return gpu_holder.visible_device(devices)
        except gpu_holder.NoDevice as exc:
            raise LoadError(f"CUDA error: {exc}") from None

    async def grow(self, target: int, modules: int, seconds: float) -> AsyncIterator[int]:
        """Hold ``target`` bytes in ``modules`` steps over ``seconds``; yields each module."""
        if self.procs is None:  # no driver: nothing to hold, the load still paces itself
            for module in range(1, modules + 1):
                yield module
                if module < modules:
                    await asyncio.sleep(seconds / modules)
            return
        self.procs.mkdir(parents=True, exist_ok=True)
        index, held = self.device(), 0
        for module in range(1, modules + 1):
            want = target * module // modules
            with gpu_holder.device_lock(self.procs):  # check and take under the driver lock
                free, total = gpu_holder.free_bytes(index)
                if want - held > free:
                    raise LoadError(
                        f"CUDA out of memory. Tried to allocate {(want - held) / MIB:.2f} MiB. "
                        f"GPU {index} has a total capacity of {total / MIB / 1024:.2f} GiB of "
                        f"which {free / MIB:.2f} MiB is free. Process {os.getpid()} has "
                        f"{held / MIB:.2f} MiB memory in use."
                    )
                gpu_holder.register(self.procs, index, want)
            held = want
            yield module
            if module < modules:
                await asyncio.sleep(seconds / modules)  # modules load at a pace

    def release(self) -> None:
        """Give all of this process's device memory back (the model is gone)."""
        if self.procs is not None:
            (self.procs / f"{os.getpid()}.json").unlink(missing_ok=True)


@dataclass
class Keys:
    api_key: str
    admin_key: str


def load_keys(disable_auth: bool) -> Keys | None:
    """``api_tokens.yml`` from the working directory, generated when missing."""
    if disable_auth:
        print("WARNING: Disabling authentication makes your instance vulnerable.", file=sys.stderr)
        return None
    path = Path(TOKENS_FILE)
    if path.exists():
        data = yaml.safe_load(path.read_text(encoding="utf8"))
        keys = Keys(api_key=str(data["api_key"]), admin_key=str(data["admin_key"]))
    else:
        keys = Keys(api_key=secrets.token_hex(16), admin_key=secrets.token_hex(16))
        text = yaml.safe_dump(
            {"api_key": keys.api_key, "admin_key": keys.admin_key}, default_flow_style=False
        )
        _write_atomically(path.resolve(), text)
    print(
        f"INFO: Your API key is: {keys.api_key}\nINFO: Your admin key is: {keys.admin_key}",
        file=sys.stderr,
        flush=True,
    )
    return keys


class FakeTabby(EchoServer):
    """TabbyAPI's model container and core routes, on top of the echo answers."""

    def __init__(self, model_dir: Path, keys: Keys | None) -> None:
        super().__init__(EchoConfig(host="127.0.0.1", port=0, models=[]))
        self.model_dir = model_dir
        self.keys = keys
        self.gpu = Gpu()
        self.container: Loaded | None = None
        self.load_lock = asyncio.Lock()  # common/model.py: loads and swaps are serialised

    # -- auth (common/auth.py) -----------------------------------------------------------

    def check_key(self, request: web.Request, *, admin: bool) -> None:
        if self.keys is None:
            return
        kind = "admin" if admin else "API"
        valid = {self.keys.admin_key} if admin else {self.keys.api_key, self.keys.admin_key}
        header = request.headers.get("x-admin-key" if admin else "x-api-key")
        if header:
            if header not in valid:
                raise TabbyHTTPError(401, f"Invalid {kind} key")
            return
        authorization = request.headers.get("authorization")
        if authorization:
            parts = authorization.split(" ")
            if len(parts) < 2 or parts[0].lower() != "bearer" or parts[1] not in valid:
                raise TabbyHTTPError(401, f"Invalid {kind} key")
            return
        raise TabbyHTTPError(401, f"Please provide an {kind} key")

    def permission(self, request: web.Request) -> str:
        """``get_key_permission``: the first of Authorization, x-admin-key, x-api-key."""
        if self.keys is None:
            return "admin"
        headers = request.headers
        key = next(
            (
                k
                for k in (headers.get(h) for h in ("authorization", "x-admin-key", "x-api-key"))
                if k is not None
            ),
            "",
        )
        if key.lower().startswith("bearer"):
            key = key.split(" ")[1]
        return "admin" if key == self.keys.admin_key else "api"

    def check_container(self) -> Loaded:
        if self.container is None:
            raise TabbyHTTPError(503, "No models are currently loaded.")
        return self.container

    # -- the model container (common/model.py) -------------------------------------------

    async def load_gen(
        self, name: str, request: dict[str, Any]
    ) -> AsyncGenerator[tuple[int, int], None]:
        """Load ``name``, unloading another first; yields (module, modules)."""
        async with self.load_lock:
            if self.container is not None and self.container.name == name:
                yield 1, 1  # already loaded: a terminal event all the same
                return
            if self.container is not None:
                print(f"INFO: Unloading existing model {self.container.name}.", file=sys.stderr)
                self.unload()
            spec_path = self.model_dir / name / "fake.json"
            try:
                spec = json.loads(spec_path.read_text())
            except (OSError, ValueError) as exc:
                raise LoadError(f"Could not read {spec_path}: {exc}") from None
            modules = int(spec.get("modules", DEFAULT_MODULES))
            target = int(float(spec["mib"]) * MIB)
            max_seq_len = int(
                request.get("max_seq_len") or spec.get("max_seq_len", DEFAULT_SEQ_LEN)
            )
            cache_size = int(request.get("cache_size") or max_seq_len)
            completed = False
            try:
                async for module in self.gpu.grow(
                    target, modules, float(spec.get("load_seconds", 0))
                ):
                    yield module, modules
                completed = True
            finally:
                if not completed:  # failed or cancelled: the half-loaded model is dropped
                    self.gpu.release()
            self.container = Loaded(name, target, max_seq_len, cache_size)
            print(f"INFO: Model {name} successfully loaded.", file=sys.stderr, flush=True)

    def unload(self) -> None:
        self.container = None
        self.gpu.release()

    # -- core routes (endpoints/core/router.py) ------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "issues": []})

    def card(self, name: str, loaded: Loaded | None = None) -> dict[str, Any]:
        card: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": loaded.created if loaded else int(time.time()),
            "owned_by": "tabbyAPI",
            "logging": None,
            "parameters": None,
        }
        if loaded is not None:
            card["logging"] = LOGGING
            card["parameters"] = {
                "max_seq_len": loaded.max_seq_len,
                "rope_scale": 1.0,
                "rope_alpha": 1.0,
                "cache_size": loaded.cache_size,
                "cache_mode": "FP16",
                "chunk_size": 2048,
                "prompt_template": None,
                "num_experts_per_token": None,
                "draft": None,
            }
        return card

    async def list_models(self, request: web.Request) -> web.Response:
        self.check_key(request, admin=False)
        if self.permission(request) == "admin":
            names = sorted(p.name for p in self.model_dir.iterdir() if p.is_dir())
        else:
            names = [self.container.name] if self.container else []
        return web.json_response({"object": "list", "data": [self.card(n) for n in names]})

    async def current_model(self, request: web.Request) -> web.Response:
        self.check_key(request, admin=False)
        loaded = self.check_container()
        return web.json_response(self.card(loaded.name, loaded))

    async def permission_route(self, request: web.Request) -> web.Response:
        self.check_key(request, admin=False)
        return web.json_response({"permission": self.permission(request)})

    async def load(self, request: web.Request) -> web.StreamResponse:
        self.check_key(request, admin=True)
        body = await read_body(request)
        name = body.get("model_name", body.get("name"))
        if name is None:
            detail = [
                {
                    "type": "missing",
                    "loc": ["body", "model_name"],
                    "msg": "Field required",
                    "input": body,
                }
            ]
            raise TabbyHTTPError(422, detail)
        if not isinstance(name, str):
            raise TabbyHTTPError(
                422,
                [
                    {
                        "type": "string_type",
                        "loc": ["body", "model_name"],
                        "msg": "Input should be a valid string",
                        "input": name,
                    }
                ],
            )
        if not name:
            raise TabbyHTTPError(400, "A model name was not provided for load.")
        if not (self.model_dir / name).exists():
            raise TabbyHTTPError(
                400, "Could not find the model path for load. Check model name or config.yml?"
            )
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        events = self.load_gen(name, body)
        try:
            async for module, modules in events:
                event = {"model_type": "model", "module": module, "modules": modules}
                await _send(response, {**event, "status": "processing"})
                if module == modules:
                    await _send(response, {**event, "status": "finished"})
        except LoadError as exc:
            print(f"ERROR: Sent to request: {exc}", file=sys.stderr, flush=True)
            with contextlib.suppress(ConnectionResetError):
                await _send(response, {"error": {"message": str(exc), "trace": None}})
        except ConnectionResetError:
            # The client went away: closing the generator cancels the load (and frees it).
            await events.aclose()
            print(
                "ERROR: Model load cancelled by user. Please make sure to run unload to "
                "free up resources.",
                file=sys.stderr,
                flush=True,
            )
            return response
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def unload_route(self, request: web.Request) -> web.Response:
        self.check_key(request, admin=True)
        self.check_container()
        self.unload()
        return web.json_response(None)

    # -- OpenAI routes -------------------------------------------------------------------

    def check_model(self, body: dict[str, Any], *, ollama: bool = False) -> str:
        return self.check_container().name  # the request's model is ignored

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        self.check_key(request, admin=False)
        self.check_container()
        return await super().chat_completions(request)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.check_key(request, admin=False)
        self.check_container()
        return await super().completions(request)


async def _send(response: web.StreamResponse, event: Any) -> None:
    await response.write(b"data: " + json.dumps(event).encode() + b"\r\n\r\n")


@web.middleware
async def tabby_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render failures as FastAPI does: ``{"detail": ...}``."""
    try:
        return await handler(request)
    except TabbyHTTPError as exc:
        return web.json_response({"detail": exc.detail}, status=exc.status)
    except EchoError as exc:  # request validation: pydantic's 422 in TabbyAPI
        return web.json_response(
            {"detail": exc.message}, status=422 if exc.status == 400 else exc.status
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"detail": exc.reason}, status=exc.status)


def create_app(server: FakeTabby) -> web.Application:
    app = web.Application(middlewares=[tabby_errors])
    app.add_routes(
        [
            web.get("/health", server.health),
            web.get("/v1/models", server.list_models),
            web.get("/v1/model/list", server.list_models),
            web.get("/v1/model", server.current_model),
            web.get("/v1/auth/permission", server.permission_route),
            web.post("/v1/model/load", server.load),
            web.post("/v1/model/unload", server.unload_route),
            web.post("/v1/chat/completions", server.chat_completions),
            web.post("/v1/completions", server.completions),
        ]
    )
    return app


async def serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = FakeTabby(Path(args.model_dir), load_keys(args.disable_auth))
    if args.model_name:
        # main.py loads the configured model before it starts the API: nothing listens yet.
        request = {"max_seq_len": args.max_seq_len, "cache_size": args.cache_size}
        if not (server.model_dir / args.model_name).exists():
            print(
                f"ERROR: model path {server.model_dir / args.model_name} does not exist",
                file=sys.stderr,
            )
            return 1
        loading = asyncio.create_task(_drain(server.load_gen(args.model_name, request)))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if stop.is_set():
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, LoadError):
                await loading
            server.unload()
            return 0
        try:
            loading.result()
        except LoadError as exc:
            print(f"ERROR: {exc}", file=sys.stderr, flush=True)
            return 1
    runner = web.AppRunner(create_app(server), access_log=None, shutdown_timeout=0.25)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = runner.addresses[0][1]
        print(
            f"INFO:     Uvicorn running on http://{args.host}:{port} (Press CTRL+C to quit)",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()
        server.unload()
    return 0


async def _drain(events: AsyncIterator[tuple[int, int]]) -> None:
    async for module, modules in events:
        print(f"INFO: Loading model modules {module}/{modules}", file=sys.stderr, flush=True)


def _bool_arg(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "y", "on")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tabby_server.py", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--model-name", default=None)
    parser.add_argument("--max-seq-len", type=int, default=None)
    parser.add_argument("--cache-size", type=int, default=None)
    parser.add_argument("--disable-auth", type=_bool_arg, nargs="?", const=True, default=False)
    parser.add_argument("--config", default=None, help="accepted and ignored (config.yml)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(serve(args))
    except OSError as exc:  # port taken
        print(f"ERROR: [Errno] cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
