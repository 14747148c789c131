"""The echo provider: an OpenAI- and Ollama-compatible HTTP server that only echoes.

It is helixd's demo, smoke-test and benchmark upstream and the test double for the proxy
and the adapters. It never pretends to be a model: every answer starts with ``echo: ``
followed by the last user message (or the prompt). Knobs make it behave like the slow or
broken servers helixd must survive: a start-up delay with the port closed (like vLLM), a
per-token delay, injected 500s before the first byte and streams that break mid-way.

Run it as ``python -m helixd.providers.echo --port N``; ``--help`` lists every knob.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import re
import signal
import struct
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from helixd import __version__
from helixd.errors import ProviderError

JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Piece = Callable[[int, str], JSON]  # (token index, token) → the frame that carries it
Frames = Callable[[], list[JSON]]  # the closing frames, built when the tokens are out

OWNER = "helixd-echo"
DEFAULT_KEEP_ALIVE = timedelta(minutes=5)  # Ollama's default idle time before an unload
FOREVER = timedelta(days=365 * 292)  # Ollama reports a negative keep_alive as ~292 years
FAKE_MODEL_BYTES = 1024  # small but non-zero, so adapters' size arithmetic is exercised
CONTEXT_LENGTH = 4096
_TOKEN_RE = re.compile(r"\s*\S+\s*|\s+")
_DURATION_RE = re.compile(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class EchoConfig:
    """The knobs of one echo server; ``python -m helixd.providers.echo --help`` explains them."""

    host: str = "127.0.0.1"
    port: int = 0
    models: list[str] = field(default_factory=lambda: ["echo"])
    startup_delay: float = 0.0
    token_delay: float = 0.0
    fail_rate: float = 0.0
    fail_after_tokens: int | None = None
    seed: int = 0
    embedding_dim: int = 8


class EchoError(ProviderError):
    """A request failure; the middleware renders it in the calling API's error shape."""

    code = "echo_error"

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        # The OpenAI error code of this failure (None, as OpenAI sends for most).
        self.status, self.message, self.wire_code = status, message, code

    def openai(self) -> JSON:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"message": self.message, "type": kind, "code": self.wire_code}


def tokenize(text: str) -> list[str]:
    """Split on whitespace but keep it, so that ``"".join(tokenize(t)) == t``."""
    return _TOKEN_RE.findall(text)


def text_of(content: Any) -> str:
    """A message's content as text: a string, or OpenAI's list of typed parts."""
    if isinstance(content, list):
        return " ".join(str(p["text"]) for p in content if isinstance(p, dict) and "text" in p)
    return content if isinstance(content, str) else ""


def embed(text: str, dim: int) -> list[float]:
    """A unit vector from SHA-256 of the text: the same input gives the same vector anywhere."""
    blocks = (hashlib.sha256(f"{i}\0{text}".encode()).digest() for i in range(-(-dim // 8)))
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dim}I", b"".join(blocks)[: dim * 4])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Round through float32 so the float and base64 encodings carry identical numbers.
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(v / norm for v in values))))


def rfc3339(moment: datetime) -> str:
    """A UTC time in the RFC 3339 form Ollama uses."""
    return moment.isoformat().replace("+00:00", "Z")


def read_field(body: JSON, name: str, kinds: type | tuple[type, ...], what: str) -> Any:
    """A required field of the request body, or a 400 that names it."""
    value = body.get(name)
    if value is None:
        raise EchoError(400, f"missing required field '{name}'")
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise EchoError(400, f"field '{name}' must be {what}")
    return value


def read_texts(body: JSON, name: str) -> list[str]:
    """A required field that is a string or a non-empty list of strings."""
    what = "a string or a non-empty list of strings"
    value = read_field(body, name, (str, list), what)
    texts = [value] if isinstance(value, str) else value
    if not texts or not all(isinstance(t, str) for t in texts):
        raise EchoError(400, f"field '{name}' must be {what}")
    return texts


def parse_keep_alive(value: Any) -> timedelta | None:
    """Ollama's keep_alive: seconds as a number or string, or a duration like ``"5m"``."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    match = _DURATION_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise EchoError(400, f"invalid keep_alive {value!r}: use seconds or a duration like '5m'")
    return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2] or "s"])


async def read_body(request: web.Request) -> JSON:
    """The request's JSON object, or a 400 saying what is wrong with it."""
    try:
        body = await request.json()
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both land here
        raise EchoError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise EchoError(400, "request body must be a JSON object")
    return body


def messages_text(messages: list[Any]) -> tuple[str, str]:
    """(the last user message's text, all messages' text): what is echoed, what is counted."""
    last, texts = "", []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise EchoError(400, f"field 'messages': messages[{index}] must be an object")
        texts.append(text_of(message.get("content")))
        if message.get("role") == "user":
            last = texts[-1]
    return last, " ".join(texts)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render failures as JSON in the shape of the API that was called; never a traceback."""
    try:
        return await handler(request)
    except EchoError as exc:
        error = exc
    except web.HTTPException as exc:  # unknown route, wrong method
        if exc.status < 400:
            raise
        error = EchoError(exc.status, exc.reason)
    except Exception as exc:
        traceback.print_exc()  # to our stderr, for the log; the client gets one line
        error = EchoError(500, f"internal error: {exc!r}")
    ollama = request.path.startswith("/api/")
    shape = {"error": error.message if ollama else error.openai()}
    return web.json_response(shape, status=error.status)


class EchoServer:
    """The handlers and the little state an echo server keeps: its RNG and what is "loaded"."""

    def __init__(self, config: EchoConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)  # seeded so failure patterns are reproducible
        self.loaded: dict[str, datetime] = {}  # model → expiry, as /api/ps reports it
        self.started = datetime.now(UTC)
        self.ids = itertools.count(1)

    def check_model(self, body: JSON, *, ollama: bool = False) -> str:
        model: str = read_field(body, "model", str, "a string")
        if model in self.config.models:
            return model
        if ollama:
            raise EchoError(404, f"model '{model}' not found")
        served = ", ".join(self.config.models)
        message = f"model '{model}' not found; this echo server serves: {served}"
        raise EchoError(404, message, "model_not_found")

    def maybe_fail(self) -> None:
        # Rolled after validation, so a bad request is a 400 whatever the seed says.
        if self.config.fail_rate > 0 and self.rng.random() < self.config.fail_rate:
            message = f"injected failure (--fail-rate {self.config.fail_rate})"
            raise EchoError(500, message, "injected_failure")

    def touch(self, model: str, keep: timedelta | None) -> None:
        keep = DEFAULT_KEEP_ALIVE if keep is None else keep
        if keep == timedelta(0):
            self.loaded.pop(model, None)
        else:
            self.loaded[model] = datetime.now(UTC) + (FOREVER if keep < timedelta(0) else keep)

    def load_or_unload(self, model: str, keep: timedelta | None, extra: JSON) -> web.Response:
        # Ollama answers a request without input by loading the model, or unloading it
        # when keep_alive is 0; helixd's adapters drive residency exactly this way.
        self.touch(model, keep)
        reason = "unload" if keep == timedelta(0) else "load"
        body = {"model": model, "created_at": rfc3339(datetime.now(UTC)), **extra}
        return web.json_response({**body, "done": True, "done_reason": reason})

    async def pay_tokens(self, count: int) -> None:
        # The per-token cost applies without streaming too, so benchmarks see the same load.
        if self.config.token_delay > 0:
            await asyncio.sleep(self.config.token_delay * count)

    async def stream(
        self, request: web.Request, tokens: list[str], ndjson: bool, piece: Piece, final: Frames
    ) -> web.StreamResponse:
        """One frame per token, then the closing frames; or an error frame if told to break."""
        content_type = "application/x-ndjson" if ndjson else "text/event-stream"
        headers = {"Content-Type": content_type, "Cache-Control": "no-cache"}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)

        def frame(obj: JSON) -> bytes:
            data = json.dumps(obj).encode()
            return data + b"\n" if ndjson else b"data: " + data + b"\n\n"

        limit = self.config.fail_after_tokens
        try:
            for index, token in enumerate(tokens):
                if limit is not None and index >= limit:
                    # The status line has gone, so the failure travels in-band, the way
                    # each API sends one; then the connection closes, never to be reused.
                    error = EchoError(
                        500, f"injected failure after {limit} tokens", "injected_failure"
                    )
                    await response.write(
                        frame({"error": error.message if ndjson else error.openai()})
                    )
                    response.force_close()
                    break
                await self.pay_tokens(1)
                await response.write(frame(piece(index, token)))
            else:
                for obj in final():
                    await response.write(frame(obj))
                if not ndjson:
                    await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; nobody is left to tell
        return response

    # -- health and listings -------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Echo provider is running")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": f"{__version__}-echo"})

    async def openai_models(self, request: web.Request) -> web.Response:
        created = int(self.started.timestamp())
        models = self.config.models
        data = [dict(id=m, object="model", created=created, owned_by=OWNER) for m in models]
        return web.json_response({"object": "list", "data": data})

    def ollama_model(self, name: str) -> JSON:
        details = dict(parent_model="", format="echo", family="echo", families=["echo"])
        details |= dict(parameter_size="0B", quantization_level="none")
        digest = hashlib.sha256(name.encode()).hexdigest()
        return dict(name=name, model=name, size=FAKE_MODEL_BYTES, digest=digest, details=details)

    async def tags(self, request: web.Request) -> web.Response:
        modified = rfc3339(self.started)
        models = [{**self.ollama_model(m), "modified_at": modified} for m in self.config.models]
        return web.json_response({"models": models})

    async def ps(self, request: web.Request) -> web.Response:
        now = datetime.now(UTC)
        for name in [n for n, expiry in self.loaded.items() if expiry <= now]:
            del self.loaded[name]  # expired: Ollama would have unloaded it by now
        # size_vram 0: an echo lives in host memory only.
        models = [
            self.ollama_model(name)
            | dict(size_vram=0, expires_at=rfc3339(expiry), context_length=CONTEXT_LENGTH)
            for name, expiry in self.loaded.items()
        ]
        return web.json_response({"models": models})

    # -- OpenAI ----------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        model = self.check_model(body)
        messages = read_field(body, "messages", list, "a non-empty list of messages")
        if not messages:
            raise EchoError(400, "field 'messages' must be a non-empty list of messages")
        last, everything = messages_text(messages)
        return await self.openai_reply(request, body, model, everything, "echo: " + last, True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        model = self.check_model(body)
        prompt = "\n".join(read_texts(body, "prompt"))  # an echo answers a batch at once
        return await self.openai_reply(request, body, model, prompt, "echo: " + prompt, False)

    async def openai_reply(
        self, request: web.Request, body: JSON, model: str, prompt: str, reply: str, chat: bool
    ) -> web.StreamResponse:
        """A chat.completion or text_completion for ``reply``, whole or streamed as SSE."""
        self.maybe_fail()
        self.touch(model, None)
        tokens, prompt_tokens = tokenize(reply), len(tokenize(prompt))
        usage = dict(prompt_tokens=prompt_tokens, completion_tokens=len(tokens))
        usage["total_tokens"] = prompt_tokens + len(tokens)
        base: JSON = {"id": f"{'chatcmpl' if chat else 'cmpl'}-echo-{next(self.ids)}"}
        base |= {"object": "chat.completion" if chat else "text_completion"}
        base |= {"created": int(time.time()), "model": model, "system_fingerprint": OWNER}

        def choices(finish: str | None, content: JSON) -> JSON:
            choice = {"index": 0, **content, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice]}

        def piece(index: int, token: str) -> JSON:
            if not chat:
                return choices(None, {"text": token})
            role = {"role": "assistant"} if index == 0 else {}  # the role comes once, first
            return choices(None, {"delta": {**role, "content": token}})

        if not body.get("stream"):
            await self.pay_tokens(len(tokens))
            message = {"role": "assistant", "content": reply}
            whole = {"message": message} if chat else {"text": reply}
            return web.json_response({**choices("stop", whole), "usage": usage})
        if chat:
            base["object"] = "chat.completion.chunk"
        options = body.get("stream_options")
        tail = [{**base, "choices": [], "usage": usage}]
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            tail = []
        last = choices("stop", {"delta": {}} if chat else {"text": ""})
        return await self.stream(request, tokens, False, piece, lambda: [last, *tail])

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        model = self.check_model(body)
        inputs = read_texts(body, "input")
        dim = body.get("dimensions") or self.config.embedding_dim
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise EchoError(400, "field 'dimensions' must be a positive integer")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise EchoError(400, "field 'encoding_format' must be 'float' or 'base64'")
        data = []
        for index, text in enumerate(inputs):
            vector: Any = embed(text, dim)
            if encoding == "base64":  # what the official openai client asks for by default
                vector = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        count = sum(len(tokenize(t)) for t in inputs)
        usage = {"prompt_tokens": count, "total_tokens": count}
        return web.json_response({"object": "list", "data": data, "model": model, "usage": usage})

    # -- Ollama ----------------------------------------------------------------------------

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        model = self.check_model(body, ollama=True)
        keep = parse_keep_alive(body.get("keep_alive"))
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise EchoError(400, "field 'prompt' must be a string")
        if not prompt:
            return self.load_or_unload(model, keep, {"response": ""})
        self.touch(model, keep)
        return await self.ollama_reply(request, body, model, prompt, "echo: " + prompt, "response")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        model = self.check_model(body, ollama=True)
        keep = parse_keep_alive(body.get("keep_alive"))
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise EchoError(400, "field 'messages' must be a list of messages")
        if not messages:
            empty = {"role": "assistant", "content": ""}
            return self.load_or_unload(model, keep, {"message": empty})
        last, everything = messages_text(messages)
        self.touch(model, keep)
        return await self.ollama_reply(request, body, model, everything, "echo: " + last, "message")

    async def ollama_reply(
        self, request: web.Request, body: JSON, model: str, prompt: str, reply: str, key: str
    ) -> web.StreamResponse:
        """Answer /api/generate (``key`` "response") or /api/chat (``key`` "message")."""
        self.maybe_fail()
        started, tokens = time.monotonic_ns(), tokenize(reply)

        def obj(text: str, done: bool) -> JSON:
            payload = {"role": "assistant", "content": text} if key == "message" else text
            now = rfc3339(datetime.now(UTC))
            return {"model": model, "created_at": now, key: payload, "done": done}

        def final(text: str) -> JSON:
            took = time.monotonic_ns() - started
            stats = dict(total_duration=took, load_duration=0, prompt_eval_duration=0)
            stats |= dict(prompt_eval_count=len(tokenize(prompt)), eval_count=len(tokens))
            stats["eval_duration"] = took
            return {**obj(text, True), "done_reason": "stop", **stats}

        if body.get("stream") is False:  # unlike OpenAI, Ollama streams unless told not to
            await self.pay_tokens(len(tokens))
            return web.json_response(final(reply))
        piece = lambda _, token: obj(token, False)  # noqa: E731
        return await self.stream(request, tokens, True, piece, lambda: [final("")])


def create_app(config: EchoConfig) -> web.Application:
    """The echo server as an aiohttp application, for in-process use and for ``serve``."""
    server = EchoServer(config)
    app = web.Application(middlewares=[error_middleware])
    app.add_routes([web.get("/", server.root), web.get("/health", server.health)])
    app.add_routes([web.get("/v1/models", server.openai_models), web.get("/api/ps", server.ps)])
    app.add_routes([web.get("/api/version", server.version), web.get("/api/tags", server.tags)])
    app.add_routes([web.post("/v1/chat/completions", server.chat_completions)])
    app.add_routes([web.post("/v1/completions", server.completions)])
    app.add_routes([web.post("/v1/embeddings", server.embeddings)])
    app.add_routes([web.post("/api/generate", server.generate), web.post("/api/chat", server.chat)])
    return app


async def serve(config: EchoConfig) -> int:
    """Listen until SIGTERM or SIGINT; return the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # the handler only sets a flag; the loop acts
    if config.startup_delay > 0:
        # Like vLLM loading its model: nothing listens yet, so clients get "connection refused".
        delay = config.startup_delay
        print(
            f"echo provider: listening in {delay} s (--startup-delay)", file=sys.stderr, flush=True
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        if stop.is_set():
            return 0
    # A short grace on stop: aiohttp waits it out twice (finish, then cancel) per open
    # request, and a stopped echo server need not finish a slow stream: it drops it.
    runner = web.AppRunner(create_app(config), access_log=None, shutdown_timeout=0.25)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        port = runner.addresses[0][1]
        host = f"[{config.host}]" if ":" in config.host else config.host
        models = ", ".join(config.models)
        print(f"echo provider listening on http://{host}:{port} (models: {models})", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


# flag, type, environment variable, default, help
_KNOBS: list[tuple[str, Callable[[str], Any], str | None, Any, str]] = [
    ("--startup-delay", float, "HELIX_ECHO_STARTUP_DELAY", 0.0, "seconds before the port listens"),
    ("--token-delay", float, "HELIX_ECHO_TOKEN_DELAY", 0.0, "seconds per generated token"),
    ("--fail-rate", float, "HELIX_ECHO_FAIL_RATE", 0.0, "fraction of completions answered 500"),
    ("--fail-after-tokens", int, "HELIX_ECHO_FAIL_AFTER_TOKENS", None, "break streams after N"),
    ("--seed", int, None, 0, "seed of the failure RNG"),
    ("--embedding-dim", int, None, 8, "embedding dimension"),
]


def parse_args(argv: Sequence[str] | None = None) -> EchoConfig:
    """Command-line flags; HELIX_ECHO_* environment variables give defaults, flags win."""
    parser = argparse.ArgumentParser(
        prog="python -m helixd.providers.echo",
        description="An OpenAI- and Ollama-compatible server that echoes; never a model.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free one (default 0)")
    models_help = "a model to serve; repeat for more (default: echo)"
    parser.add_argument("--model", dest="models", action="append", metavar="NAME", help=models_help)
    for flag, convert, variable, default, text in _KNOBS:
        raw = os.environ.get(variable, "") if variable else ""
        try:
            value = convert(raw) if raw else default
        except ValueError:
            parser.error(f"environment variable {variable}={raw!r} is not a valid number")
        where = f" [env {variable}]" if variable else ""
        text = f"{text} (default {default}){where}"
        parser.add_argument(flag, type=convert, default=value, help=text)
    ns = parser.parse_args(argv)
    for flag, value in (("--startup-delay", ns.startup_delay), ("--token-delay", ns.token_delay)):
        if not (math.isfinite(value) and value >= 0):
            parser.error(f"{flag} must be a finite number of seconds >= 0, not {value}")
    if not 0.0 <= ns.fail_rate <= 1.0:
        parser.error(f"--fail-rate must be between 0 and 1, not {ns.fail_rate}")
    if ns.fail_after_tokens is not None and ns.fail_after_tokens < 0:
        parser.error(f"--fail-after-tokens must be >= 0, not {ns.fail_after_tokens}")
    if ns.embedding_dim < 1 or not 0 <= ns.port <= 65535:
        parser.error("--embedding-dim must be >= 1 and --port between 0 and 65535")
    return EchoConfig(**{**vars(ns), "models": list(dict.fromkeys(ns.models or ["echo"]))})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m helixd.providers.echo``."""
    config = parse_args(argv)
    try:
        return asyncio.run(serve(config))
    except OSError as exc:  # port taken, address not available
        where = f"{config.host}:{config.port}"
        print(f"echo provider: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
