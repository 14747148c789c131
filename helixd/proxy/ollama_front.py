"""The Ollama routes of the endpoint: Ollama clients in, any OpenAI-compatible upstream out.

The server resolves names, acquires models and relays; this front only speaks the
dialect (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``,
``/api/show``, ``/api/tags``, ``/api/ps``, ``/api/version``, ``/``) and hands translated
requests to it. Listings show each model once, its aliases on it (``helix.aliases``),
and routes marked as such (``helix.kind = "route"``); Ollama clients ignore the field.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from helixd import __version__
from helixd.edge.client import Pool, UpstreamIOError
from helixd.edge.message import Answer, Request, Response, json_response
from helixd.edge.routes import Routes
from helixd.proxy.attempt import Exchange, Refused
from helixd.proxy.ollama import (
    OLLAMA_STATUS,
    BadOllamaRequest,
    now_rfc3339,
    ollama_error,
    rfc3339,
    translate,
)
from helixd.proxy.ollama_show import ModelFile, ModelFiles, model_details, show_document
from helixd.proxy.relay import read_bounded
from helixd.proxy.routing import Attempts, Router
from helixd.scheduler import ModelStatus, Residency, ResidencyError


class OllamaBackend(Protocol):
    """What the front needs from the endpoint's server (``ProxyServer``), which it never
    imports: the server builds the front, so the front only names what it uses."""

    @property
    def residency(self) -> Residency:
        """The models and their residency."""
        ...

    @property
    def router(self) -> Router:
        """Names, aliases and routes."""
        ...

    async def read_body(self, request: Request) -> tuple[bytes, dict[str, Any]]:
        """The bounded, parsed JSON body; :class:`Refused` when it is not acceptable."""
        ...

    def resolve_plan(self, asked: str, body: Mapping[str, Any]) -> Attempts:
        """The models a name stands for, without classifying the request."""
        ...

    async def plan(self, body: dict[str, Any]) -> Attempts:
        """The models to try for a request, in order."""
        ...

    async def attempt_in_order(self, x: Exchange) -> Answer:
        """Serve the exchange from its plan's models, falling back in order."""
        ...

    def access_log(self, x: Exchange) -> None:
        """Log the finished exchange."""
        ...

    def refused_log(
        self, request: Request, asked: Any, status: int, code: str, started: float
    ) -> None:
        """Log a request refused before any model was tried."""
        ...

    def _pool_or_fail(self) -> Pool:
        """The upstream client (the server's own, private to the proxy package)."""
        ...


log = logging.getLogger("helixd.proxy")

# A model kept for ever expires in the far future, as in Ollama (its -1 keep_alive is
# now plus Go's longest duration, some 292 years).
_NEVER = "2318-08-01T00:00:00Z"

# An Ollama answers /api/show from its own files: seconds, unless it is stuck.
SHOW_TIMEOUT_S = 30.0
# Ollama's own /api/show answer, passed through: templates and model_info, not tensors
# worth of junk (verbose answers stay well under this).
SHOW_BYTES = 8 * 1024 * 1024


class OllamaFront:
    """Ollama's HTTP API on the endpoint's port."""

    def __init__(self, server: OllamaBackend) -> None:
        self.server = server
        self.files = ModelFiles()

    def add_routes(self, routes: Routes) -> None:
        """Register the Ollama routes."""
        for path in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings"):
            routes.add_post(path, self.handle)
        routes.add_post("/api/show", self.show)
        routes.add_get("/api/tags", self.tags)
        routes.add_get("/api/ps", self.ps)
        routes.add_get("/api/version", self.version)
        routes.add_get("/", self.root)

    async def root(self, request: Request) -> Response:
        """``GET /``: what Ollama clients probe."""
        return Response(text="Ollama is running")

    async def version(self, request: Request) -> Response:
        """``GET /api/version``."""
        return json_response({"version": __version__})

    async def tags(self, request: Request) -> Response:
        """``GET /api/tags``: every model once (aliases on it), then the routes."""
        models = self.server.residency.views()
        files = await self._files_of(models)
        cards = [self._card(m, files) for m in models]
        cards += [self._route_card(route) for route in self.server.router.routes]
        return json_response({"models": cards})

    async def ps(self, request: Request) -> Response:
        """``GET /api/ps``: the resident models, with helixd's memory figures."""
        loaded = [m for m in self.server.residency.views() if m.loaded]
        files = await self._files_of(loaded)
        cards = []
        for model in loaded:
            card = self._card(model, files)
            card["size"] = model.vram_bytes + model.ram_bytes
            card["size_vram"] = model.vram_bytes
            card["expires_at"] = self._expires_at(model)
            cards.append(card)
        return json_response({"models": cards})

    async def _files_of(self, models: list[ModelStatus]) -> dict[Path, ModelFile]:
        """The facts of these models' files (GGUF headers, read off the event loop)."""
        paths = [m.config.path for m in models]
        return await self.files.read_all(p for p in paths if p is not None)

    def _expires_at(self, model: ModelStatus) -> str:
        # When keep_alive will unload it if nothing uses it; Ollama's far future if never.
        if model.pinned or math.isinf(model.keep_alive_s):
            return _NEVER
        return rfc3339((model.last_used_wall or time.time()) + model.keep_alive_s)

    def _card(self, model: ModelStatus, files: dict[Path, ModelFile]) -> dict[str, Any]:
        name = model.name
        facts = files.get(model.config.path) if model.config.path is not None else None
        helix: dict[str, Any] = {"state": str(model.state), "provider": model.provider}
        aliases = self.server.router.aliases_of(name)
        if aliases:
            helix["aliases"] = aliases
        return {
            "name": name,
            "model": name,
            "modified_at": rfc3339(facts.modified) if facts is not None else now_rfc3339(),
            "size": model.size_bytes,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": model_details(facts),
            "helix": helix,
        }

    def _route_card(self, route: str) -> dict[str, Any]:
        return {
            "name": route,
            "model": route,
            "modified_at": now_rfc3339(),
            "size": 0,
            "digest": hashlib.sha256(f"route:{route}".encode()).hexdigest(),
            "details": model_details(None),
            "helix": self.server.router.describe_route(route),
        }

    async def show(self, request: Request) -> Response:
        """``POST /api/show``: what Ollama says of a model, from helixd's config and the
        model's file, never loading it; an Ollama provider's models from that Ollama."""
        try:
            _, body = await self.server.read_body(request)
        except Refused as refused:
            # Ollama still accepts the older "name"; the request keeps the body read_body read.
            named = await _legacy_named(request) if refused.code == "missing_model" else None
            if named is None:
                return ollama_error(OLLAMA_STATUS[refused.code], refused.message)
            body = named
        asked = body["model"]
        try:
            plan = self.server.resolve_plan(asked, body)
        except Refused as refused:
            return ollama_error(OLLAMA_STATUS[refused.code], refused.message)
        if not plan.order:
            return ollama_error(404, f"route {asked!r} has no model left to serve it")
        model = plan.order[0]  # a route is shown as the model a request would get first
        try:
            shown = self.server.residency.view(model)
        except ResidencyError as exc:  # a reload removed it since the plan was made
            return ollama_error(OLLAMA_STATUS[exc.code], str(exc))
        if shown.adapter.native_dialect == "ollama":
            passed = await self._show_from_ollama(shown, body)
            if passed is not None:
                return passed
        facts = None
        if shown.config.path is not None:
            facts = (await self.files.read_all([shown.config.path])).get(shown.config.path)
        document = show_document(model, shown.config, facts, time.time())
        helix: dict[str, Any] = {
            "model": model,
            "state": str(shown.state),
            "provider": shown.provider,
        }
        if plan.route is not None:
            helix["route"] = plan.route
        elif asked != model:
            helix["alias_of"] = model
        return json_response({**document, "helix": helix})

    async def _show_from_ollama(self, entry: ModelStatus, body: dict[str, Any]) -> Response | None:
        """Ollama's own answer for a model it hosts; None when it cannot be asked."""
        base = entry.adapter.server_url()
        if base is None:
            return None  # not serving now: helixd's own document will do
        payload = {k: v for k, v in body.items() if k != "name"}
        payload["model"] = entry.config.id or entry.name
        try:
            async with asyncio.timeout(SHOW_TIMEOUT_S):
                upstream, _ = await self.server._pool_or_fail().post(
                    base + "/api/show",
                    json.dumps(payload).encode(),
                    entry.adapter.upstream_headers(entry.name),
                )
                async with upstream:
                    answer = await read_bounded(upstream, SHOW_BYTES)
                content_type = upstream.headers.get("Content-Type", "application/json")
                status = upstream.status
        except (UpstreamIOError, TimeoutError) as exc:
            log.warning(
                "/api/show %s: %s did not answer (%s); answering from the config",
                entry.name,
                entry.adapter.provider,
                exc or type(exc).__name__,
            )
            return None
        return Response(status=status, body=answer, headers={"Content-Type": content_type})

    async def handle(self, request: Request) -> Answer:
        """``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``: translated
        to OpenAI upstreams (passed through to an Ollama provider's own server)."""
        started = time.perf_counter()
        body: dict[str, Any] = {}
        try:
            raw, body = await self.server.read_body(request)
            asked = body["model"]
            if _is_load_or_unload(request.path, body):
                # Nothing to classify or to spend: just the model the name stands for.
                plan = self.server.resolve_plan(asked, body)
                return await self._load_or_unload(asked, plan, body, request.path)
            # A request that cannot be translated is refused before a classifier is asked.
            translation = translate(request.path, body)
            plan = await self.server.plan(body)
        except (Refused, BadOllamaRequest) as exc:
            code = exc.code
            status = OLLAMA_STATUS[code]
            self.server.refused_log(request, body.get("model"), status, code, started)
            message = exc.message if isinstance(exc, Refused) else str(exc)
            return ollama_error(status, message)
        exchange = Exchange(request, body, raw, plan, started, translation)
        try:
            return await self.server.attempt_in_order(exchange)
        except asyncio.CancelledError:
            exchange.outcome.client_gone()
            raise
        finally:
            self.server.access_log(exchange)

    async def _load_or_unload(
        self, asked: str, plan: Attempts, body: dict[str, Any], path: str
    ) -> Response:
        """An empty generate (or legacy embeddings) loads the model (``keep_alive: 0``
        unloads it), as in Ollama."""
        model = plan.order[0]
        try:
            if body.get("keep_alive") in (0, "0", "0s"):
                await self.server.residency.unload(model)
                reason = "unload"
            else:
                await self.server.residency.load(model)
                reason = "load"
        except ResidencyError as exc:
            return ollama_error(OLLAMA_STATUS[exc.code], str(exc))
        if path == "/api/embeddings":
            return json_response({"embedding": []})
        return json_response(
            {
                "model": asked,
                "created_at": now_rfc3339(),
                "response": "",
                "done": True,
                "done_reason": reason,
            }
        )


def _is_load_or_unload(path: str, body: dict[str, Any]) -> bool:
    # Ollama's convention: a generate with no prompt loads (or with keep_alive 0 unloads);
    # so does the older embeddings route, answering an empty embedding.
    if path == "/api/embeddings":
        return body.get("prompt") in (None, "")
    return path == "/api/generate" and not body.get("prompt") and not body.get("system")


async def _legacy_named(request: Request) -> dict[str, Any] | None:
    """A body that names its model ``name`` (Ollama's older field), as one with ``model``."""
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return None
    return {**body, "model": body["name"]}
