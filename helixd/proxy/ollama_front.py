"""The Ollama routes of the endpoint: Ollama clients in, any OpenAI-compatible upstream out.

The server resolves names, acquires models and relays; this front only speaks the
dialect (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/tags``, ``/api/ps``,
``/api/version``, ``/``) and hands translated requests to it.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from helixd import __version__
from helixd.proxy.attempt import RESIDENCY_STATUS, Exchange, Refused
from helixd.proxy.ollama import BadOllamaRequest, now_rfc3339, ollama_error, rfc3339, translate
from helixd.proxy.routing import Attempts
from helixd.scheduler.entry import ModelEntry
from helixd.scheduler.residency import ResidencyError

if TYPE_CHECKING:
    from helixd.proxy.server import ProxyServer


# A model kept for ever expires in the far future, as in Ollama (its -1 keep_alive is
# now plus Go's longest duration, some 292 years).
_NEVER = "2318-08-01T00:00:00Z"


class OllamaFront:
    """Ollama's HTTP API on the endpoint's port."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    def add_routes(self, app: web.Application) -> None:
        """Register the Ollama routes."""
        for path in ("/api/chat", "/api/generate", "/api/embed"):
            app.router.add_post(path, self.handle)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/", self.root)

    async def root(self, request: web.Request) -> web.Response:
        """``GET /``: what Ollama clients probe."""
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        """``GET /api/version``."""
        return web.json_response({"version": __version__})

    async def tags(self, request: web.Request) -> web.Response:
        """``GET /api/tags``: every model and alias, in Ollama's shape."""
        names = [n for n, e in self.server.residency.models.items() if not e.removed]
        names += list(self.server.router.aliases)
        return web.json_response({"models": [self._card(n) for n in names]})

    async def ps(self, request: web.Request) -> web.Response:
        """``GET /api/ps``: the resident models, with helixd's memory figures."""
        cards = []
        for name, entry in self.server.residency.models.items():
            if entry.state == "loaded":
                card = self._card(name)
                card["size"] = entry.accounted_vram + entry.accounted_ram
                card["size_vram"] = entry.accounted_vram
                card["expires_at"] = self._expires_at(entry)
                cards.append(card)
        return web.json_response({"models": cards})

    def _expires_at(self, entry: ModelEntry) -> str:
        # When keep_alive will unload it if nothing uses it; Ollama's far future if never.
        keep = entry.config.keep_alive or self.server.residency.scheduler.keep_alive
        if entry.pinned or math.isinf(keep):
            return _NEVER
        return rfc3339((entry.last_used_wall or time.time()) + keep)

    def _card(self, name: str) -> dict[str, Any]:
        model = self.server.router.model_of(name) or name
        entry = self.server.residency.models[model]
        size = entry.figure.vram_bytes + entry.figure.ram_bytes
        details = {"format": "", "family": "", "parameter_size": "", "quantization_level": ""}
        return {
            "name": name,
            "model": name,
            "modified_at": now_rfc3339(),
            "size": size,
            "digest": hashlib.sha256(model.encode()).hexdigest(),
            "details": details,
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``/api/chat``, ``/api/generate``, ``/api/embed``: translated to OpenAI upstreams."""
        started = time.perf_counter()
        try:
            raw, body = await self.server.read_body(request)
            asked = body["model"]
            if _is_load_or_unload(request.path, body):
                # Nothing to classify or to spend: just the model the name stands for.
                plan = self.server.resolve_plan(asked, body)
                return await self._load_or_unload(asked, plan, body)
            # A request that cannot be translated is refused before a classifier is asked.
            translation = translate(request.path, body)
            plan = await self.server.plan(body)
        except Refused as refused:
            return ollama_error(refused.status, refused.message)
        except BadOllamaRequest as exc:
            return ollama_error(400, str(exc))
        exchange = Exchange(request, body, raw, plan, started, translation)
        try:
            return await self.server.attempt_in_order(exchange)
        finally:
            self.server.access_log(exchange)

    async def _load_or_unload(
        self, asked: str, plan: Attempts, body: dict[str, Any]
    ) -> web.Response:
        """An empty generate loads the model (``keep_alive: 0`` unloads it), as in Ollama."""
        model = plan.order[0]
        try:
            if body.get("keep_alive") in (0, "0", "0s"):
                await self.server.residency.unload(model)
                reason = "unload"
            else:
                await self.server.residency.load(model)
                reason = "load"
        except ResidencyError as exc:
            return ollama_error(RESIDENCY_STATUS.get(exc.code, exc.status), str(exc))
        return web.json_response(
            {
                "model": asked,
                "created_at": now_rfc3339(),
                "response": "",
                "done": True,
                "done_reason": reason,
            }
        )


def _is_load_or_unload(path: str, body: dict[str, Any]) -> bool:
    # Ollama's convention: a generate with no prompt loads (or with keep_alive 0 unloads).
    return path == "/api/generate" and not body.get("prompt") and not body.get("system")
