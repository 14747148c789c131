"""The proxy's HTTP server: OpenAI routes in front of the residency scheduler.

Request flow (DESIGN.md): bounded body → resolve the name → ``residency.use`` (waits in
the model's bounded queue, may load, may evict) → relay to the model's own server,
streaming → release. A client that goes away cancels its handler (aiohttp's
``handler_cancellation``), which takes it out of the queue or frees its slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from helixd.config import ProxyConfig
from helixd.config.proxy import split_listen
from helixd.proxy.errors import openai_error
from helixd.proxy.relay import UpstreamUnreachable, relay, unreachable
from helixd.scheduler.residency import Residency, ResidencyError

log = logging.getLogger("helixd.proxy")
access_log = logging.getLogger("helixd.access")

MiB = 1024**2
# A request that finds its model's server gone before any byte came back is tried again
# once (the scheduler may have reloaded it meanwhile).
UNREACHABLE_RETRIES = 1
# Residency's refusals, as an API client should see them.
_STATUS = {"queue_full": 429, "does_not_fit": 507, "timeout": 504, "model_failed": 503}


class ProxyServer:
    """The TCP endpoint apps call, by model name or alias."""

    def __init__(self, config: ProxyConfig, residency: Residency) -> None:
        self.config = config
        self.residency = residency
        self.host, self.port = split_listen(config.listen)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._aliases: dict[str, str] = {}

    # -- life cycle --------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application(
            client_max_size=self.config.max_body_mib * MiB, middlewares=[self._guard]
        )
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{name:.+}", self.get_model)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self.forward)
        return app

    async def start(self) -> None:
        """Bind and serve; an address in use raises OSError for the daemon to report."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=self.config.upstream_timeout_s
        )
        # trust_env=False: an HTTP(S)_PROXY in helixd's environment must never route
        # loopback traffic to a model's server.
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            trust_env=False,
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
        )
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, shutdown_timeout=5.0)
        await site.start()
        if self.port == 0:
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, finish or drop what is in flight, close upstream connections."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def set_aliases(self, aliases: dict[str, str]) -> None:
        """Alias → model name, from the config (replaced on reload)."""
        self._aliases = dict(aliases)

    def info(self) -> dict[str, Any]:
        """For ``status``."""
        return {"listen": f"{self.host}:{self.port}", "url": f"http://{self.host}:{self.port}"}

    # -- middleware --------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        keys = self.config.api_keys
        if keys:
            given = request.headers.get("Authorization", "")
            token = given[7:] if given.startswith("Bearer ") else request.headers.get("x-api-key")
            if token not in keys:
                return openai_error(
                    401, "missing or wrong API key (Authorization: Bearer KEY)", "invalid_api_key"
                )
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPRequestEntityTooLarge:
            limit = self.config.max_body_mib
            return openai_error(
                413, f"request body over {limit} MiB ([proxy] max_body_mib)", "body_too_large"
            )
        except web.HTTPNotFound:
            return openai_error(
                404, f"no such endpoint: {request.method} {request.path}", "unknown_endpoint"
            )
        except web.HTTPMethodNotAllowed:
            return openai_error(
                405, f"{request.method} is not allowed on {request.path}", "method_not_allowed"
            )

    # -- names -------------------------------------------------------------------------

    def resolve(self, name: str) -> str | None:
        """A model's name from a model name or an alias."""
        if name in self.residency.models and not self.residency.models[name].removed:
            return name
        return self._aliases.get(name)

    def _unknown(self, name: str) -> web.Response:
        known = sorted(n for n, e in self.residency.models.items() if not e.removed)
        listing = ", ".join(known + sorted(self._aliases)) or "none configured"
        return openai_error(404, f"no model named {name!r}; models: {listing}", "model_not_found")

    # -- handlers ----------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: models and aliases, with helixd's residency fields."""
        data = [self._model_card(name) for name in self.residency.models]
        data += [self._model_card(model, alias) for alias, model in self._aliases.items()]
        return web.json_response({"object": "list", "data": [d for d in data if d]})

    async def get_model(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{id}``."""
        name = request.match_info["name"]
        model = self.resolve(name)
        card = self._model_card(model, name if name != model else None) if model else None
        if card is None:
            return self._unknown(name)
        return web.json_response(card)

    def _model_card(self, model: str, alias: str | None = None) -> dict[str, Any] | None:
        entry = self.residency.models.get(model)
        if entry is None or entry.removed:
            return None
        helix: dict[str, Any] = {"state": str(entry.state), "provider": entry.adapter.provider}
        if alias is not None:
            helix["alias_of"] = model
        return {
            "id": alias or model,
            "object": "model",
            "created": 0,
            "owned_by": "helixd",
            "helix": helix,
        }

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """The OpenAI POST routes: acquire the model, relay, release."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.read_timeout_s):
                raw = await request.read()
        except TimeoutError:
            limit = self.config.read_timeout_s
            return openai_error(
                408, f"request body not received within {limit:g} s", "request_timeout"
            )
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return openai_error(400, f"request body is not valid JSON: {exc}", "invalid_json")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return openai_error(400, "the request needs a 'model' (a string)", "missing_model")
        asked = body["model"]
        model = self.resolve(asked)
        if model is None:
            return self._unknown(asked)
        status, result = 500, None
        try:
            async with self.residency.use(model) as entry:
                upstream_id = entry.adapter.upstream_model(model)
                if upstream_id != asked:
                    body["model"] = upstream_id
                    raw = json.dumps(body).encode()
                headers = {"x-helix-model": model}
                for attempt in range(UNREACHABLE_RETRIES + 1):
                    base = entry.adapter.upstream(model)
                    if base is None:
                        why = "its server is gone"
                    else:
                        try:
                            response, result = await relay(
                                self._session_or_fail(),
                                request,
                                base + request.path,
                                raw,
                                headers,
                                started,
                                time.perf_counter,
                            )
                            status = result.status
                            return response
                        except UpstreamUnreachable as exc:
                            why = str(exc)
                    log.warning("%s: upstream unreachable (try %d): %s", model, attempt + 1, why)
                status = 502
                return unreachable(model, why)
        except ResidencyError as exc:
            status = _STATUS.get(exc.code, exc.status)
            retry = {"Retry-After": "1"} if status == 429 else None
            return openai_error(status, str(exc), exc.code, retry)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            ttft = result.first_byte_s if result is not None else None
            access_log.info(
                "%s %s model=%s status=%d ms=%.1f ttft_ms=%s",
                request.method,
                request.path,
                model,
                status,
                elapsed_ms,
                f"{ttft * 1000:.1f}" if ttft is not None else "-",
            )

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("proxy not started")
        return self._session
