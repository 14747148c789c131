"""A fake LocalAI (``local-ai run``): one server, one backend process per loaded model.

    python tests/fakes/localai_server.py run [--address HOST:PORT] [--models-path DIR] \
        [--api-keys KEY ...] [--max-active-backends N] [--single-active-backend] \
        [--enable-watchdog-idle] [--watchdog-idle-timeout 15m] [--enable-watchdog-busy] \
        [--watchdog-busy-timeout 5m] [--watchdog-interval 500ms] \
        [--model-load-failure-cooldown 10s] [--fake-start-seconds 0.5]

LocalAI cannot be installed here, so helixd's LocalAI adapter is tested against this
process. It follows mudler/LocalAI as read in November 2026 (``shared/PROVIDERS.md`` pins
82c191a, which the code index did not hold; each file below names the commit it was read
at):

- settings (``core/cli/run.go`` @00c2243): every flag also reads LocalAI's environment variables
  (kong ``env`` tags), flag first: ``LOCALAI_ADDRESS``/``ADDRESS`` (default ``:8080``, all
  interfaces), ``LOCALAI_MODELS_PATH``/``MODELS_PATH``, ``LOCALAI_API_KEY``/``API_KEY``
  (comma-separated), ``LOCALAI_MAX_ACTIVE_BACKENDS``/``MAX_ACTIVE_BACKENDS`` (0 =
  unlimited; LRU eviction past it), ``LOCALAI_SINGLE_ACTIVE_BACKEND`` (deprecated: = max
  1; max-active wins when > 0), ``LOCALAI_WATCHDOG_IDLE`` + ``LOCALAI_WATCHDOG_IDLE_TIMEOUT``
  (15m), ``LOCALAI_WATCHDOG_BUSY`` + ``LOCALAI_WATCHDOG_BUSY_TIMEOUT`` (5m),
  ``LOCALAI_WATCHDOG_INTERVAL`` (500ms), ``LOCALAI_LRU_EVICTION_MAX_RETRIES`` (30) /
  ``_RETRY_INTERVAL`` (1s), ``LOCALAI_FORCE_EVICTION_WHEN_BUSY``, and
  ``LOCALAI_MODEL_LOAD_FAILURE_COOLDOWN`` (10s: after a failed load, loads of that model
  get 503 + ``Retry-After``, the window doubling per failure up to 5m; from LocalAI's
  ``docs/.../runtime-errors`` page and a v4.8.2 ``run.go``; older releases lack it). Go
  durations (``15m``, ``500ms``) and ``strconv.ParseBool`` booleans, as kong parses them.
- models: LocalAI reads one YAML config per model from the models path; here each model
  is ``NAME.json`` = ``{"mib": N, "load_seconds": S, "backend": "llama-cpp"}`` in
  ``--models-path``, standing for ``NAME.yaml`` (``mib``/``load_seconds`` are the fake
  weights, ``backend`` the config's ``backend:``). ``GET /v1/models`` lists them as
  ``{"object": "list", "data": [{"id", "object": "model"}]}``.
- health (``core/http/routes/health_test.go`` @5439607): ``/healthz`` is always 200; ``/readyz``
  is 503 while starting, then 200. Here "starting" lasts ``--fake-start-seconds`` (a fake
  flag); the 503 body ``{"status": "starting"}`` is from PROVIDERS.md (unverified), the
  200 body ``OK`` from the older ``health.go`` @171c55d. Both skip auth.
- ``POST /backend/load {"model"}`` (``core/http/endpoints/localai/backend_load.go`` @0967066,
  ``core/backend`` ``PreloadModelByName``): blocks until
  loaded; 200 ``{"loaded": [NAME], "message": "model loaded"}``; failure 500
  ``{"loaded": null, "message": "failed to load model: ..."}``; no model 400
  ``{"loaded": null, "message": "model is required"}``. An unknown name is not refused up
  front: LocalAI builds a stub config and tries every backend, so it is a 500 with
  ``could not load model - all backends returned error: ...`` (the prefix is from
  LocalAI's runtime-errors doc; the per-backend tail here is made up). Each backend is its
  own process, as LocalAI's gRPC backends are: ``tests/fakes/gpu_holder.py`` holding the
  model's MiB on the fake NVML under its own pid (a child of this server), or the echo
  provider when ``HELIXD_FAKE_NVML_DIR`` is unset (a CPU backend). A backend that dies
  while loading (CUDA OOM) is a 500 whose message ends with its last stderr line, as
  LocalAI builds it from "the process exit code and the last stderr line" (exact wording
  unverified). Concurrent loads of one model coalesce; the cooldown 503's body is
  unverified.
- ``POST /backend/shutdown {"model"}`` (``core/http/endpoints/localai/backend_monitor.go``
  @0c8bba1): 200
  ``{"message": "model stopped"}``; not loaded: 404 ``model "X" is not loaded on this
  instance or on any worker node``; no model: 400 ``model is required``.
- ``GET /backend/monitor?model=X`` (or a JSON body ``{"model"}``, same file): the
  llama-cpp C++ backend has no ``Status`` RPC (unverified), so LocalAI samples the
  backend process (``core/services/monitoring/backend_monitor.go`` @42ccffe): ``{"state": -1,
  "memory": {"total": VMS, "breakdown": {"gopsutil-RSS": RSS}}}``, read here with psutil
  from the backend's pid. Not loaded: 500 ``backend X is not currently loaded``.
- ``GET /system`` (``core/schema`` ``SystemInformationResponse``, and LocalAI's
  ``SystemInformations`` test): ``{"backends":
  [...], "loaded_models": [{"id": NAME, "backend": BACKEND}]}``.
- ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` load the model on
  demand (no ``model``: the first configured one, as LocalAI's default-model middleware
  does) and answer with the echo provider.
- errors (``core/http/app.go`` @020fddf, ``schema.APIError``): ``{"error": {"code": N, "message":
  M, "type": ""}}``, where an ``echo.HTTPError``'s message reads ``code=N, message=...``.
- API keys (``core/http/auth/middleware.go``): with keys set, everything but
  ``/healthz``/``/readyz`` needs ``Authorization: Bearer K`` (or a bare ``Authorization:
  K``), ``x-api-key``, ``xi-api-key`` or a ``token`` cookie; else 401 ``{"error": {"code":
  401, "message": "An authentication key is required", "type": "invalid_request_error"}}``
  with ``WWW-Authenticate: Bearer``.
- SIGTERM/SIGINT stop every backend (``StopAllGRPC``) and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from helixd.providers.echo import EchoConfig, EchoError, EchoServer, read_body
from tests.fakes.ollama_server import HOLDER, _stop

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

VERSION = "v3.10.0-fake"  # what /version reports; the API above is not tied to one release
MAX_COOLDOWN_S = 300.0  # LocalAI doubles the load-failure cooldown up to 5 minutes
PUBLIC_PATHS = ("/healthz", "/readyz")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class LocalAIError(Exception):
    """A request failure, rendered in LocalAI's ``schema.ErrorResponse`` shape."""

    def __init__(
        self, status: int, message: str, kind: str = "", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = headers or {}


class LoadFailed(Exception):
    """A model that could not be loaded; ``retry_after`` is set while it cools down."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def http_error(status: int, message: str) -> LocalAIError:
    """What ``echo.NewHTTPError`` becomes: its ``Error()`` text is the message."""
    return LocalAIError(status, f"code={status}, message={message}")


def parse_bool(text: str) -> bool:
    """``strconv.ParseBool``, which kong uses for boolean flags and variables."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"strconv.ParseBool: parsing {text!r}: invalid syntax")


def go_duration(text: str) -> float:
    """Seconds of a Go ``time.ParseDuration`` string such as ``15m``, ``1h30m``, ``500ms``."""
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-")
    if body == "0":
        return 0.0
    seconds, position = 0.0, 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != position:
            break
        seconds += float(match[1]) * _UNIT_S[match[2]]
        position = match.end()
    if not body or position != len(body):
        raise argparse.ArgumentTypeError(f'time: invalid duration "{text}"')
    return sign * seconds


@dataclass
class Settings:
    """The ``local-ai run`` settings this fake honours, resolved from flags and variables."""

    host: str | None
    port: int
    models_path: Path
    api_keys: list[str]
    max_active: int  # 0: unlimited
    watchdog_idle: bool
    watchdog_idle_timeout: float
    watchdog_busy: bool
    watchdog_busy_timeout: float
    watchdog_interval: float
    lru_retries: int
    lru_retry_interval: float
    force_eviction_when_busy: bool
    load_failure_cooldown: float
    start_seconds: float


# flag, environment variables (first set wins), type, default
_OPTIONS: list[tuple[str, tuple[str, ...], Callable[[str], Any], str]] = [
    ("--address", ("LOCALAI_ADDRESS", "ADDRESS"), str, ":8080"),
    ("--models-path", ("LOCALAI_MODELS_PATH", "MODELS_PATH"), str, "models"),
    ("--max-active-backends", ("LOCALAI_MAX_ACTIVE_BACKENDS", "MAX_ACTIVE_BACKENDS"), int, "0"),
    (
        "--single-active-backend",
        ("LOCALAI_SINGLE_ACTIVE_BACKEND", "SINGLE_ACTIVE_BACKEND"),
        parse_bool,
        "false",
    ),
    ("--enable-watchdog-idle", ("LOCALAI_WATCHDOG_IDLE", "WATCHDOG_IDLE"), parse_bool, "false"),
    (
        "--watchdog-idle-timeout",
        ("LOCALAI_WATCHDOG_IDLE_TIMEOUT", "WATCHDOG_IDLE_TIMEOUT"),
        go_duration,
        "15m",
    ),
    ("--enable-watchdog-busy", ("LOCALAI_WATCHDOG_BUSY", "WATCHDOG_BUSY"), parse_bool, "false"),
    (
        "--watchdog-busy-timeout",
        ("LOCALAI_WATCHDOG_BUSY_TIMEOUT", "WATCHDOG_BUSY_TIMEOUT"),
        go_duration,
        "5m",
    ),
    (
        "--watchdog-interval",
        ("LOCALAI_WATCHDOG_INTERVAL", "WATCHDOG_INTERVAL"),
        go_duration,
        "500ms",
    ),
    (
        "--lru-eviction-max-retries",
        ("LOCALAI_LRU_EVICTION_MAX_RETRIES", "LRU_EVICTION_MAX_RETRIES"),
        int,
        "30",
    ),
    (
        "--lru-eviction-retry-interval",
        ("LOCALAI_LRU_EVICTION_RETRY_INTERVAL", "LRU_EVICTION_RETRY_INTERVAL"),
        go_duration,
        "1s",
    ),
    (
        "--force-eviction-when-busy",
        ("LOCALAI_FORCE_EVICTION_WHEN_BUSY", "FORCE_EVICTION_WHEN_BUSY"),
        parse_bool,
        "false",
    ),
    (
        "--model-load-failure-cooldown",
        ("LOCALAI_MODEL_LOAD_FAILURE_COOLDOWN", "MODEL_LOAD_FAILURE_COOLDOWN"),
        go_duration,
        "10s",
    ),
]


def parse_args(argv: Sequence[str]) -> Settings:
    """``local-ai run`` flags over LocalAI's environment variables over its defaults."""
    parser = argparse.ArgumentParser(prog="localai_server.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the API server")
    for flag, variables, convert, default in _OPTIONS:
        raw = next((os.environ[v] for v in variables if os.environ.get(v)), default)
        try:
            value = convert(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{variables[0]}={raw!r}: {exc}")
        help_text = f"(default {default}) [env {', '.join(variables)}]"
        if convert is parse_bool:  # kong takes --flag and --flag=false alike
            run.add_argument(
                flag, type=parse_bool, nargs="?", const=True, default=value, help=help_text
            )
        else:
            run.add_argument(flag, type=convert, default=value, help=help_text)
    env_keys = next(
        (os.environ[v] for v in ("LOCALAI_API_KEY", "API_KEY") if os.environ.get(v)), ""
    )
    run.add_argument(
        "--api-keys",
        nargs="+",
        action="extend",
        default=None,
        metavar="KEY",
        help="API keys; repeat or comma-separate [env LOCALAI_API_KEY, API_KEY]",
    )
    run.add_argument(
        "--fake-start-seconds",
        type=float,
        default=0.5,
        help="fake only: how long /readyz says starting (default 0.5)",
    )
    ns = parser.parse_args(argv)
    host, _, port = ns.address.rpartition(":")
    if not port.isdigit():
        parser.error(f"--address {ns.address!r}: expected HOST:PORT")
    max_active = ns.max_active_backends if ns.max_active_backends > 0 else 0
    if not max_active and ns.single_active_backend:
        max_active = 1  # --single-active-backend is --max-active-backends=1 (run.go)
    given = [k for item in ns.api_keys or [] for k in item.split(",")]
    return Settings(
        host=host.strip("[]") or None,  # ":8080" listens on every interface, as Go does
        port=int(port),
        models_path=Path(ns.models_path),
        api_keys=[k for k in (given if ns.api_keys is not None else env_keys.split(",")) if k],
        max_active=max_active,
        watchdog_idle=ns.enable_watchdog_idle,
        watchdog_idle_timeout=ns.watchdog_idle_timeout,
        watchdog_busy=ns.enable_watchdog_busy,
        watchdog_busy_timeout=ns.watchdog_busy_timeout,
        watchdog_interval=max(ns.watchdog_interval, 0.01),
        lru_retries=ns.lru_eviction_max_retries,
        lru_retry_interval=ns.lru_eviction_retry_interval,
        force_eviction_when_busy=ns.force_eviction_when_busy,
        load_failure_cooldown=ns.model_load_failure_cooldown,
        start_seconds=ns.fake_start_seconds,
    )


class Backend:
    """One loaded model: its backend process, its use, and the tail of its output."""

    def __init__(self, name: str, backend: str, process: asyncio.subprocess.Process) -> None:
        self.name, self.backend, self.process = name, backend, process
        self.last_used = time.monotonic()
        self.busy = 0
        self.busy_since = 0.0
        self.stderr: collections.deque[str] = collections.deque(maxlen=20)
        self.drains: list[asyncio.Task[None]] = []

    def alive(self) -> bool:
        return self.process.returncode is None

    async def drain(self, stream: asyncio.StreamReader, keep: bool) -> None:
        # Pipes are read to the end so a chatty backend never blocks on a full pipe.
        while line := await stream.readline():
            if keep:
                self.stderr.append(line.decode(errors="replace").rstrip())

    def start_use(self) -> None:
        if self.busy == 0:
            self.busy_since = time.monotonic()
        self.busy += 1

    def end_use(self) -> None:
        self.busy -= 1
        self.last_used = time.monotonic()


class FakeLocalAI(EchoServer):
    """LocalAI's model loader and watchdog in miniature, on top of the echo answers."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(EchoConfig(host="127.0.0.1", port=0, models=[]))
        self.settings = settings
        self.started_at = time.monotonic()
        self.backends: dict[str, Backend] = {}
        self.loading: set[str] = set()
        self.model_locks: dict[str, asyncio.Lock] = {}
        self.slots = asyncio.Lock()  # eviction and the active-backend count change together
        self.cooldowns: dict[str, tuple[float, float]] = {}  # model → (until, window)

    # -- model configs -------------------------------------------------------------------

    def configs(self) -> dict[str, dict[str, Any]]:
        """The models path's configs, read afresh as LocalAI's loader rescans its path."""
        found: dict[str, dict[str, Any]] = {}
        if self.settings.models_path.is_dir():
            for path in sorted(self.settings.models_path.glob("*.json")):
                found[path.stem] = json.loads(path.read_text())
        return found

    def check_model(self, body: dict[str, Any], *, ollama: bool = False) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            configs = self.configs()
            if not configs:
                raise LocalAIError(500, "no model specified and no models are configured")
            model = next(iter(configs))
        return model

    # -- backends ------------------------------------------------------------------------

    async def spawn(self, name: str, config: dict[str, Any]) -> Backend:
        """Start a model's backend process and wait until it serves, or fail with its error."""
        echo = ["--port", "0", "--model", name]
        if os.environ.get("HELIXD_FAKE_NVML_DIR"):
            mib, load = str(config.get("mib", 0)), str(config.get("load_seconds", 0))
            argv = [str(HOLDER), "--mib", mib, "--load-seconds", load, "--", *echo]
        else:  # no GPU driver: a CPU backend with no device memory
            argv = ["-m", "helixd.providers.echo", *echo]
        process = await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert process.stdout is not None and process.stderr is not None
        backend = Backend(name, str(config.get("backend", "llama-cpp")), process)
        backend.drains.append(asyncio.create_task(backend.drain(process.stderr, keep=True)))
        # Ready once it listens, as LocalAI waits for the backend's gRPC health check.
        while line := await process.stdout.readline():
            if b"listening" in line:
                break
        backend.drains.append(asyncio.create_task(backend.drain(process.stdout, keep=False)))
        if not line:
            code = await process.wait()
            await asyncio.gather(*backend.drains)
            last = backend.stderr[-1] if backend.stderr else ""
            raise LoadFailed(
                f"could not load model: backend process exited with status {code}: {last}"
            )
        print(f"fake localai: loaded {name} (backend pid {process.pid})", file=sys.stderr)
        return backend

    async def stop_backend(self, name: str, why: str) -> None:
        backend = self.backends.pop(name, None)
        if backend is None:
            return
        await _stop(backend.process)
        for task in backend.drains:
            task.cancel()
        print(f"fake localai: stopped {name} ({why})", file=sys.stderr, flush=True)

    async def make_room(self, name: str) -> None:
        """Evict least recently used backends past ``max_active``, as LocalAI's LRU does."""
        async with self.slots:
            limit = self.settings.max_active
            while limit and self.backends and len(self.backends) + len(self.loading) >= limit:
                victim = await self.lru_victim()
                await self.stop_backend(victim, f"evicted for {name}: max active backends")
            self.loading.add(name)

    async def lru_victim(self) -> str:
        # A busy backend is waited for (LRU eviction retries) unless eviction is forced.
        for _ in range(max(self.settings.lru_retries, 0) + 1):
            idle = [b for b in self.backends.values() if b.busy == 0]
            if idle or self.settings.force_eviction_when_busy:
                break
            await asyncio.sleep(self.settings.lru_retry_interval)
        candidates = [b for b in self.backends.values() if b.busy == 0] or list(
            self.backends.values()
        )
        return min(candidates, key=lambda b: b.last_used).name

    def check_cooldown(self, name: str) -> None:
        until, _ = self.cooldowns.get(name, (0.0, 0.0))
        left = until - time.monotonic()
        if left > 0:
            message = f"model {name} failed to load recently; loads are refused for {left:.1f}s"
            raise LoadFailed(message, retry_after=max(1, math.ceil(left)))

    def note_failure(self, name: str) -> None:
        base = self.settings.load_failure_cooldown
        if base <= 0:
            return
        previous = self.cooldowns.get(name)
        window = min(previous[1] * 2, MAX_COOLDOWN_S) if previous else base
        self.cooldowns[name] = (time.monotonic() + window, window)

    async def ensure_loaded(self, name: str) -> Backend:
        """The model's running backend, loading it first if need be (coalesced per model)."""
        lock = self.model_locks.setdefault(name, asyncio.Lock())
        async with lock:
            backend = self.backends.get(name)
            if backend is not None and backend.alive():
                return backend
            await self.stop_backend(name, "its process died")
            self.check_cooldown(name)
            config = self.configs().get(name)
            if config is None:
                self.note_failure(name)
                raise LoadFailed(
                    "could not load model - all backends returned error: "
                    f"1 error occurred:\n\t* no model config or model file named {name!r}"
                )
            await self.make_room(name)
            try:
                backend = await self.spawn(name, config)
            except LoadFailed:
                self.note_failure(name)
                raise
            finally:
                self.loading.discard(name)
            self.cooldowns.pop(name, None)
            self.backends[name] = backend
            return backend

    async def watchdog(self) -> None:
        """Reap dead backends; stop idle or stuck ones when the watchdogs are on."""
        now, settings = time.monotonic(), self.settings
        for name, backend in list(self.backends.items()):
            if not backend.alive():
                await self.stop_backend(name, "its process died")
            elif backend.busy and settings.watchdog_busy:
                if now - backend.busy_since > settings.watchdog_busy_timeout:
                    await self.stop_backend(name, "busy watchdog")
            elif (
                settings.watchdog_idle and now - backend.last_used > settings.watchdog_idle_timeout
            ):
                await self.stop_backend(name, "idle watchdog")

    async def stop_all(self) -> None:
        for name in list(self.backends):
            await self.stop_backend(name, "shutting down")

    # -- LocalAI routes ------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def readyz(self, request: web.Request) -> web.Response:
        if time.monotonic() - self.started_at < self.settings.start_seconds:
            return web.json_response({"status": "starting"}, status=503)
        return web.Response(text="OK")

    async def models_list(self, request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model"} for name in self.configs()]
        return web.json_response({"object": "list", "data": data})

    async def version_info(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def system(self, request: web.Request) -> web.Response:
        configs = self.configs()
        available = {str(c.get("backend", "llama-cpp")) for c in configs.values()}
        loaded = [
            {"id": name, "backend": backend.backend}
            for name, backend in sorted(self.backends.items())
            if backend.alive()
        ]
        return web.json_response({"backends": sorted(available), "loaded_models": loaded})

    async def load(self, request: web.Request) -> web.Response:
        model = await _model_of(request)
        if not model:
            return web.json_response({"loaded": None, "message": "model is required"}, status=400)
        try:
            await self.ensure_loaded(model)
        except LoadFailed as exc:
            body = {"loaded": None, "message": f"failed to load model: {exc}"}
            if exc.retry_after is not None:
                headers = {"Retry-After": str(exc.retry_after)}
                return web.json_response(body, status=503, headers=headers)
            return web.json_response(body, status=500)
        return web.json_response({"loaded": [model], "message": "model loaded"})

    async def shutdown(self, request: web.Request) -> web.Response:
        model = await _model_of(request)
        if not model:
            raise http_error(400, "model is required")
        if model not in self.backends:
            message = f"model {json.dumps(model)} is not loaded on this instance or on any worker"
            raise http_error(404, message + " node")
        await self.stop_backend(model, "/backend/shutdown")
        return web.json_response({"message": "model stopped"})

    async def monitor(self, request: web.Request) -> web.Response:
        model = request.query.get("model") or await _model_of(request)
        if not model:
            raise http_error(400, "model query parameter is required")
        backend = self.backends.get(model)
        if backend is None or not backend.alive():
            raise LocalAIError(500, f"backend {model} is not currently loaded")
        try:
            memory = psutil.Process(backend.process.pid).memory_info()
        except psutil.Error as exc:
            message = f"backend {model}: failed local node process sample: {exc}"
            raise LocalAIError(500, message) from None
        # The Status RPC failed, so LocalAI reports ERROR (-1) with a process sample.
        breakdown = {"gopsutil-RSS": memory.rss}
        return web.json_response(
            {"state": -1, "memory": {"total": memory.vms, "breakdown": breakdown}}
        )

    # -- OpenAI routes with on-demand loading --------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._with_backend(request, super().chat_completions)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._with_backend(request, super().completions)

    async def embeddings(self, request: web.Request) -> web.Response:
        response = await self._with_backend(request, super().embeddings)
        assert isinstance(response, web.Response)
        return response

    async def _with_backend(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        model = self.check_model(await read_body(request))
        try:
            backend = await self.ensure_loaded(model)
        except LoadFailed as exc:
            if exc.retry_after is not None:
                headers = {"Retry-After": str(exc.retry_after)}
                raise LocalAIError(503, str(exc), headers=headers) from None
            raise LocalAIError(500, str(exc)) from None
        backend.start_use()
        try:
            return await handler(request)
        finally:
            backend.end_use()


async def _model_of(request: web.Request) -> str:
    """The ``model`` of a JSON body (``c.Bind``), or ""; a malformed body is a 400."""
    if not request.can_read_body:
        return ""
    try:
        body = await read_body(request)
    except EchoError as exc:
        raise http_error(400, exc.message) from None
    model = body.get("model")
    return model if isinstance(model, str) else ""


@web.middleware
async def localai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render failures as LocalAI's ``{"error": {"code", "message", "type"}}``."""
    try:
        return await handler(request)
    except LocalAIError as exc:
        error = exc
    except EchoError as exc:
        error = LocalAIError(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = http_error(exc.status, exc.reason)
    body = {"error": {"code": error.status, "message": error.message, "type": error.kind}}
    return web.json_response(body, status=error.status, headers=error.headers)


def _api_keys(keys: list[str]) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if keys and request.path not in PUBLIC_PATHS:
            auth = request.headers.get("Authorization", "")
            key = auth.removeprefix("Bearer ") if auth else ""
            for source in (request.headers.get("x-api-key"), request.headers.get("xi-api-key")):
                key = key or source or ""
            key = key or request.cookies.get("token", "")
            if key not in keys:
                message = "An authentication key is required"
                error = {"code": 401, "message": message, "type": "invalid_request_error"}
                headers = {"WWW-Authenticate": "Bearer"}
                return web.json_response({"error": error}, status=401, headers=headers)
        return await handler(request)

    return check


def create_app(server: FakeLocalAI) -> web.Application:
    app = web.Application(middlewares=[_api_keys(server.settings.api_keys), localai_errors])
    routes = [
        web.get("/healthz", server.healthz),
        web.get("/readyz", server.readyz),
        web.get("/version", server.version_info),
        web.get("/system", server.system),
        web.get("/v1/models", server.models_list),
        web.get("/models", server.models_list),
        web.post("/backend/load", server.load),
        web.post("/v1/backend/load", server.load),
        web.post("/backend/shutdown", server.shutdown),
        web.post("/v1/backend/shutdown", server.shutdown),
        web.get("/backend/monitor", server.monitor),
        web.get("/v1/backend/monitor", server.monitor),
        web.post("/v1/chat/completions", server.chat_completions),
        web.post("/chat/completions", server.chat_completions),
        web.post("/v1/completions", server.completions),
        web.post("/completions", server.completions),
        web.post("/v1/embeddings", server.embeddings),
        web.post("/embeddings", server.embeddings),
    ]
    app.add_routes(routes)
    return app


async def serve(settings: Settings) -> int:
    server = FakeLocalAI(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(server), access_log=None, shutdown_timeout=0.25)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        server.started_at = time.monotonic()  # /readyz counts its start from here
        where = f"{settings.host or ''}:{settings.port}"
        print(
            f"LocalAI API is listening! Please connect to the endpoint for API documentation. "
            f"address={where}",
            file=sys.stderr,
            flush=True,
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.watchdog_interval):
                    await stop.wait()
            await server.watchdog()
    finally:
        await server.stop_all()
        await runner.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(serve(settings))
    except OSError as exc:  # address in use
        print(
            f"fake localai: cannot listen on {settings.host}:{settings.port}: {exc}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
