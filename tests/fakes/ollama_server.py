"""A fake Ollama server: Ollama's HTTP API and start-up, with models that hold fake GPU memory.

    OLLAMA_HOST=127.0.0.1:PORT python tests/fakes/ollama_server.py --library LIB.json \
        [--registry REG.json]

Ollama itself cannot be installed on this machine (no internet beyond package indexes),
so helixd's Ollama adapter is tested against this process, which follows Ollama's API as
documented in its ``docs/api.md`` and ``server/routes.go`` (ollama/ollama@fb30760, see
``shared/PROVIDERS.md``):

- it listens at once with no model loaded (``GET /`` → ``Ollama is running``);
- ``/api/tags`` lists the installed models (the ``--library`` file: ``{"name": {"mib": N,
  "cpu_mib": M, "load_seconds": S}}``); ``/api/ps`` the loaded ones with ``size`` (all of
  it) and ``size_vram`` (the part on the GPU; less than ``size`` = partly on CPU);
- a model loads on demand on any generate/chat/embed, in its own *runner* process, as
  Ollama's ``ollama runner`` — here ``tests/fakes/gpu_holder.py``, which registers its
  GPU memory with the fake NVML under its own pid and fails with a CUDA out-of-memory
  message when the card is full;
- ``keep_alive`` (request field, or ``OLLAMA_KEEP_ALIVE``, default 5m; negative = for
  ever; 0 = unload now) decides when a model unloads, and ``OLLAMA_MAX_LOADED_MODELS``
  (default 3 per GPU) makes it evict the least recently used model to load another:
  Ollama's own scheduler, which helixd must keep from ever firing;
- an empty generate/chat loads the model (or unloads it with ``keep_alive: 0``,
  answering ``done_reason: "unload"``);
- ``/api/pull`` streams Ollama's NDJSON progress for a model of the ``--registry`` file
  and installs it (its entry, ``digest`` included); an unknown one ends the stream with an
  ``{"error"}`` line;
- ``/api/tags`` gives each model the ``digest`` of its library entry (default: the sha256 of
  its name), so a registry entry with another digest is a new version of the model;
- ``/api/show`` answers from the library without loading (404 ``model 'x' not found``
  for a model it does not have); ``/api/embeddings`` is the older one-vector embed;
- requests whose ``Host`` is not loopback, an IP or ``localhost`` get 403, as Ollama does
  when it listens on loopback;
- answers are the echo provider's (``echo: …``), in Ollama's NDJSON and in the OpenAI
  dialect of its ``/v1`` routes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from helixd.providers.echo import (
    CONTEXT_LENGTH,
    EchoConfig,
    EchoError,
    EchoServer,
    embed,
    error_middleware,
    parse_keep_alive,
    read_body,
    rfc3339,
)

MIB = 1024 * 1024
HOLDER = Path(__file__).resolve().with_name("gpu_holder.py")
VERSION = "0.12.6"  # the Ollama version whose API this fake follows
PULL_CHUNKS = 8


def _duration_env(name: str, default: timedelta) -> timedelta:
    raw = os.environ.get(name, "")
    parsed = parse_keep_alive(raw) if raw else None
    return default if parsed is None else parsed


class Runner:
    """One loaded model: its runner process and when it was last used."""

    def __init__(self, process: asyncio.subprocess.Process, vram_mib: float) -> None:
        self.process = process
        self.vram_mib = vram_mib
        self.last_used = time.monotonic()


class FakeOllama(EchoServer):
    """Ollama's scheduler in miniature, on top of the echo answers."""

    def __init__(self, library: Path, registry: Path | None) -> None:
        super().__init__(EchoConfig(host="127.0.0.1", port=0, models=[]))
        self.library_path = library
        self.registry_path = registry
        self.default_keep = _duration_env("OLLAMA_KEEP_ALIVE", timedelta(minutes=5))
        self.max_loaded = int(os.environ.get("OLLAMA_MAX_LOADED_MODELS") or 0) or 3
        self.runners: dict[str, Runner] = {}
        self.loading = asyncio.Lock()  # Ollama loads one model at a time

    # -- the library ---------------------------------------------------------------------

    def library(self) -> dict[str, dict[str, Any]]:
        data: dict[str, dict[str, Any]] = json.loads(self.library_path.read_text())
        return data

    def check_model(self, body: dict[str, Any], *, ollama: bool = False) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise EchoError(400, "model is required")
        if model not in self.library():
            raise EchoError(404, f'model "{model}" not found, try pulling it first')
        return model

    def ollama_model(self, name: str) -> dict[str, Any]:
        spec = self.library().get(name, {})
        card = super().ollama_model(name)
        card["size"] = int((spec.get("mib", 0) + spec.get("cpu_mib", 0)) * MIB)
        card["digest"] = spec.get("digest") or card["digest"]
        card["details"] = {**card["details"], "format": "gguf", "family": "fake"}
        return card

    async def tags(self, request: web.Request) -> web.Response:
        modified = rfc3339(self.started)
        models = [{**self.ollama_model(m), "modified_at": modified} for m in self.library()]
        return web.json_response({"models": models})

    async def ps(self, request: web.Request) -> web.Response:
        await self.reap()
        cards = []
        for name, expiry in self.loaded.items():
            card = self.ollama_model(name)
            card["size_vram"] = int(self.runners[name].vram_mib * MIB)
            card["expires_at"] = rfc3339(expiry)
            card["context_length"] = CONTEXT_LENGTH
            cards.append(card)
        return web.json_response({"models": cards})

    # -- residency -----------------------------------------------------------------------

    def touch(self, model: str, keep: timedelta | None) -> None:
        keep = self.default_keep if keep is None else keep
        super().touch(model, keep)
        if model in self.runners:
            self.runners[model].last_used = time.monotonic()

    async def reap(self) -> None:
        """Stop the runners of models that expired, were unloaded, or died."""
        now = datetime.now(UTC)
        for name in [n for n, expiry in self.loaded.items() if expiry <= now]:
            del self.loaded[name]
        for name, runner in list(self.runners.items()):
            if runner.process.returncode is not None:
                self.loaded.pop(name, None)
            if name not in self.loaded:
                del self.runners[name]
                await _stop(runner.process)
                print(f"fake ollama: unloaded {name}", file=sys.stderr, flush=True)

    async def ensure_loaded(self, model: str, keep: timedelta | None) -> None:
        """Start the model's runner unless it runs; evict the LRU model past the limit."""
        async with self.loading:
            await self.reap()
            if model in self.runners:
                return
            while len(self.runners) >= self.max_loaded:
                victim = min(self.runners, key=lambda n: self.runners[n].last_used)
                print(f"fake ollama: evicting {victim} (max loaded)", file=sys.stderr, flush=True)
                self.loaded.pop(victim, None)
                await self.reap()
            spec = self.library()[model]
            vram = float(spec.get("mib", 0))
            echo = ["--port", "0", "--model", model]
            if os.environ.get("HELIXD_FAKE_NVML_DIR"):
                load = str(spec.get("load_seconds", 0))
                argv = [str(HOLDER), "--mib", str(vram), "--load-seconds", load, "--", *echo]
            else:  # no GPU: Ollama runs the model on the CPU
                vram = 0.0
                argv = ["-m", "helixd.providers.echo", *echo]
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert process.stdout is not None and process.stderr is not None
            # "gpu_holder: PID holds N MiB …" or "echo provider listening on …"
            line = await process.stdout.readline()
            if b"holds" not in line and b"listening" not in line:
                await process.wait()
                why = (await process.stderr.read()).decode().strip().splitlines()
                raise EchoError(500, f"llama runner process has terminated: {why[-1:]}")
            self.runners[model] = Runner(process, vram)
            self.touch(model, keep)
            print(
                f"fake ollama: loaded {model} (runner {process.pid})", file=sys.stderr, flush=True
            )

    # -- Ollama routes with on-demand loading --------------------------------------------

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._with_model(request, super().generate)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._with_model(request, super().chat)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._with_model(request, super().chat_completions)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._with_model(request, super().completions)

    async def embeddings(self, request: web.Request) -> web.Response:
        response = await self._with_model(request, super().embeddings)
        assert isinstance(response, web.Response)
        return response

    async def _with_model(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await read_body(request)
        model = self.check_model(body)
        keep = parse_keep_alive(body.get("keep_alive"))
        if keep == timedelta(0):
            self.loaded.pop(model, None)
            await self.reap()
        else:
            await self.ensure_loaded(model, keep)
        response: web.StreamResponse = await handler(request)
        return response

    async def api_embed(self, request: web.Request) -> web.StreamResponse:
        return await self._with_model(request, self._embed_ollama)

    async def api_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._with_model(request, self._embeddings_ollama)

    async def _embeddings_ollama(self, request: web.Request) -> web.Response:
        prompt = (await read_body(request)).get("prompt") or ""
        vector = embed(prompt, self.config.embedding_dim) if prompt else []
        return web.json_response({"embedding": vector})

    async def show(self, request: web.Request) -> web.Response:
        # Answered from the library alone: Ollama's show never loads the model.
        body = await read_body(request)
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or model not in self.library():
            raise EchoError(404, f"model '{model}' not found")
        details = {**self.ollama_model(model)["details"], "families": ["fake"]}
        info = {"general.architecture": "fake", "fake.context_length": CONTEXT_LENGTH}
        document = {
            "modelfile": f"FROM {model}\n",
            "parameters": 'stop                           "<|end|>"',
            "template": "{{ .Prompt }}",
            "details": details,
            "model_info": info,
            "capabilities": ["completion"],
            "modified_at": rfc3339(self.started),
        }
        return web.json_response(document)

    async def _embed_ollama(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise EchoError(400, "invalid input type")
        vectors = [embed(t, self.config.embedding_dim) for t in texts]
        return web.json_response({"model": body["model"], "embeddings": vectors})

    # -- pull ----------------------------------------------------------------------------

    async def pull(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            raise EchoError(400, "model is required")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)

        async def send(obj: dict[str, Any]) -> None:
            await response.write(json.dumps(obj).encode() + b"\n")

        await send({"status": "pulling manifest"})
        available = json.loads(self.registry_path.read_text()) if self.registry_path else {}
        if model not in available:
            await send({"error": "pull model manifest: file does not exist"})
            await response.write_eof()
            return response
        spec = available[model]
        total = int((spec.get("mib", 0) + spec.get("cpu_mib", 0)) * MIB)
        digest = "sha256:" + (spec.get("digest") or hashlib.sha256(model.encode()).hexdigest())
        for step in range(PULL_CHUNKS + 1):
            completed = total * step // PULL_CHUNKS
            await send(
                {
                    "status": f"pulling {digest[7:19]}",
                    "digest": digest,
                    "total": total,
                    "completed": completed,
                }
            )
            await asyncio.sleep(float(spec.get("pull_seconds", 0.4)) / PULL_CHUNKS)
        for status in ("verifying sha256 digest", "writing manifest"):
            await send({"status": status})
        library = self.library()
        library[model] = spec
        _write_atomically(self.library_path, json.dumps(library, indent=1))
        await send({"status": "success"})
        await response.write_eof()
        return response


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(5):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def _write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as handle:
        handle.write(text)
    os.replace(handle.name, path)


def _loopback_host_only(listening_on_loopback: bool) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].strip("[]")
        allowed = host in ("localhost", "") or host.endswith((".localhost", ".local", ".internal"))
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            allowed = True
        if listening_on_loopback and not allowed:
            return web.Response(status=403)
        response: web.StreamResponse = await handler(request)
        return response

    return check


def create_app(server: FakeOllama, loopback: bool) -> web.Application:
    app = web.Application(middlewares=[_loopback_host_only(loopback), error_middleware])
    app.add_routes(
        [
            web.get("/", server.root),
            web.get("/api/version", server.version),
            web.get("/api/tags", server.tags),
            web.get("/api/ps", server.ps),
            web.get("/v1/models", server.openai_models),
            web.post("/api/generate", server.generate),
            web.post("/api/chat", server.chat),
            web.post("/api/pull", server.pull),
            web.post("/api/embed", server.api_embed),
            web.post("/api/embeddings", server.api_embeddings),
            web.post("/api/show", server.show),
            web.post("/v1/chat/completions", server.chat_completions),
            web.post("/v1/completions", server.completions),
            web.post("/v1/embeddings", server.embeddings),
        ]
    )
    return app


async def serve(library: Path, registry: Path | None) -> int:
    address = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    host, _, port = address.rpartition(":")
    server = FakeOllama(library, registry)

    async def root(request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    server.root = root  # type: ignore[method-assign]
    server.version = version  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loopback = host in ("127.0.0.1", "localhost", "::1")
    runner = web.AppRunner(create_app(server, loopback), access_log=None, shutdown_timeout=0.25)
    await runner.setup()
    try:
        await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
        print(f"Listening on {address} (version {VERSION})", file=sys.stderr, flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):  # expiries happen on their own, as in Ollama
                    await stop.wait()
            await server.reap()
    finally:
        server.loaded.clear()
        await server.reap()
        await runner.cleanup()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="ollama_server.py", description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, required=True, help="installed models (JSON)")
    parser.add_argument("--registry", type=Path, help="models /api/pull can fetch (JSON)")
    args = parser.parse_args()
    return asyncio.run(serve(args.library, args.registry))


if __name__ == "__main__":
    sys.exit(main())
