"""The control API's residency routes: ``/v1/models`` and load/unload/pin/unpin."""

from __future__ import annotations

import math
from typing import Any, Protocol

from aiohttp import web

from helixd.control.api import ControlAPI
from helixd.control.errors import CONTROL_STATUS
from helixd.control.routes import add_commands, error
from helixd.scheduler import Residency, ResidencyError

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
    add_commands(app, ("models",), routes)
    app.router.add_post("/v1/models/{name}/{action}", routes.unknown_action)


class _ModelRoutes:
    def __init__(self, api: ControlAPI, backend: ModelsBackend) -> None:
        self.api = api
        self.backend = backend

    async def list_models(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.ListModels`: every model, and the devices they live on."""
        residency = self.backend.residency
        await residency.refresh()
        return web.json_response({"models": residency.infos(), "devices": residency.devices()})

    async def get_model(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.GetModel`."""
        try:
            info = self.backend.residency.info(request.match_info["name"])
        except ResidencyError as exc:
            return error(CONTROL_STATUS[exc.code], exc.code, str(exc))
        return web.json_response({"model": info})

    async def model_load(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.LoadModel`."""
        return await self._model_action(request, "load")

    async def model_unload(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.UnloadModel`."""
        return await self._model_action(request, "unload")

    async def model_pin(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.PinModel`."""
        return await self._model_action(request, "pin")

    async def model_unpin(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.UnpinModel`."""
        return await self._model_action(request, "unpin")

    async def unknown_action(self, request: web.Request) -> web.Response:
        """``POST /v1/models/{name}/ACTION`` for an action that is not a command."""
        action = request.match_info["action"]
        return error(404, "not_found", f"unknown action {action!r}; use {', '.join(ACTIONS)}")

    async def _model_action(self, request: web.Request, action: str) -> web.Response:
        """``POST /v1/models/{name}/load|unload|pin|unpin[?timeout=S]``."""
        name = request.match_info["name"]
        if self.backend.stopping:
            return error(503, "stopping", "helixd is shutting down")
        residency = self.backend.residency
        timeout = _timeout(request, residency.scheduler.load_timeout_s)
        if timeout is None:
            return error(400, "bad_request", "timeout must be a number of seconds from 0 to 86400")
        self.api._audit(request, f"{action} model {name}")
        try:
            residency.view(name)  # an unknown name is refused before anything is done
            if action == "load":
                await residency.load(name, timeout)
            elif action == "unload":
                await residency.unload(name)
            else:
                self.backend.set_pin(name, action == "pin")
                if action == "pin":
                    # A pin means "resident": say so only once it is (or why it is not).
                    try:
                        await residency.load(name, timeout)
                    except ResidencyError as exc:
                        exc.args = (
                            f"{name} is pinned (and will be retried), but not loaded: {exc}",
                        )
                        raise
            # (Inside the try: a reload may have removed the model meanwhile.)
            return web.json_response({"model": residency.info(name)})
        except ResidencyError as exc:
            details: dict[str, Any] = {}
            if residency.find(name) is not None and exc.code != "unknown_model":
                details["model"] = residency.info(name)
            return error(CONTROL_STATUS[exc.code], exc.code, str(exc), **details)


def _timeout(request: web.Request, default: float) -> float | None:
    try:
        timeout = float(request.query.get("timeout", default))
    except ValueError:
        return None
    if not math.isfinite(timeout) or not 0 < timeout <= 86400:
        return None
    return timeout
