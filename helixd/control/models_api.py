"""The control API's residency routes: ``/v1/models`` and load/unload/pin/unpin."""

from __future__ import annotations

import math
from typing import Any, Protocol

from aiohttp import web

from helixd.control.api import ControlAPI, error
from helixd.scheduler.residency import Residency, ResidencyError

ACTIONS = ("load", "unload", "pin", "unpin")


class ModelsBackend(Protocol):
    """What the model routes need from the daemon."""

    residency: Residency
    stopping: bool

    def set_pin(self, name: str, pinned: bool) -> None:
        """Pin or unpin ``name`` at run time and persist it."""
        ...


def add_model_routes(api: ControlAPI, app: web.Application, backend: ModelsBackend) -> None:
    """Register the model routes on ``app`` (same error shape and audit as the rest)."""
    routes = _ModelRoutes(api, backend)
    app.router.add_get("/v1/models", routes.list_models)
    app.router.add_get("/v1/models/{name}", routes.get_model)
    app.router.add_post("/v1/models/{name}/{action}", routes.model_action)


class _ModelRoutes:
    def __init__(self, api: ControlAPI, backend: ModelsBackend) -> None:
        self.api = api
        self.backend = backend

    async def list_models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: every model, and the devices they live on."""
        residency = self.backend.residency
        await residency.refresh()
        models = [residency.info(e) for e in residency.models.values() if not e.removed]
        return web.json_response({"models": models, "devices": residency.devices()})

    async def get_model(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{name}``."""
        try:
            entry = self.backend.residency.entry(request.match_info["name"])
        except ResidencyError as exc:
            return error(exc.status, exc.code, str(exc))
        return web.json_response({"model": self.backend.residency.info(entry)})

    async def model_action(self, request: web.Request) -> web.Response:
        """``POST /v1/models/{name}/load|unload|pin|unpin[?timeout=S]``."""
        name, action = request.match_info["name"], request.match_info["action"]
        if action not in ACTIONS:
            return error(404, "not_found", f"unknown action {action!r}; use {', '.join(ACTIONS)}")
        if self.backend.stopping:
            return error(503, "stopping", "helixd is shutting down")
        residency = self.backend.residency
        timeout = _timeout(request, residency.scheduler.load_timeout_s)
        if timeout is None:
            return error(400, "bad_request", "timeout must be a number of seconds from 0 to 86400")
        self.api._audit(request, f"{action} model {name}")
        try:
            entry = residency.entry(name)
            if action == "load":
                entry = await residency.load(name, timeout)
            elif action == "unload":
                entry = await residency.unload(name)
            else:
                self.backend.set_pin(name, action == "pin")
                if action == "pin":
                    # A pin means "resident": say so only once it is (or why it is not).
                    try:
                        entry = await residency.load(name, timeout)
                    except ResidencyError as exc:
                        exc.args = (
                            f"{name} is pinned (and will be retried), but not loaded: {exc}",
                        )
                        raise
        except ResidencyError as exc:
            details: dict[str, Any] = {}
            current = residency.models.get(name)
            if current is not None and exc.code != "unknown_model":
                details["model"] = residency.info(current)
            return error(exc.status, exc.code, str(exc), **details)
        return web.json_response({"model": residency.info(entry)})


def _timeout(request: web.Request, default: float) -> float | None:
    try:
        timeout = float(request.query.get("timeout", default))
    except ValueError:
        return None
    if not math.isfinite(timeout) or not 0 < timeout <= 86400:
        return None
    return timeout
