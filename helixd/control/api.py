"""The control API: HTTP/1.1 + JSON over the Unix socket, as DESIGN.md's table lays out.

Its commands are those :mod:`helixd.protocol` lists, each served by the handler that
bears the command's name (``add_commands``); helixctl builds its requests from that list.

Handlers are thin: they parse the request, call the backend (the daemon), and shape the
answer. Every error is ``{"error": {"code", "message"}}`` with a fitting status. Only
names from the config are accepted, never command lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, Protocol

from aiohttp import web

from helixd.control.pull import pull
from helixd.control.routes import add_commands, error
from helixd.control.routes import dumps as _dumps
from helixd.control.sockets import peer_uid
from helixd.errors import ReloadRefused
from helixd.supervisor.arbiter import Supervisor, UnknownProcess
from helixd.supervisor.process import ManagedProcess, ProcessClosed, ProcessState
from helixd.ui.feed import FeedRefused, LiveFeed

log = logging.getLogger("helixd.control")

MAX_LOG_LINES = 10_000
# How often a quiet log follower checks that its client is still there: aiohttp does not
# cancel a handler when the client goes away, only the next write would notice.
FOLLOW_CHECK_S = 5.0
DEFAULT_WAIT_S = 120.0


class ControlBackend(Protocol):
    """What the control API needs from the daemon."""

    supervisor: Supervisor
    stopping: bool
    live_feed: LiveFeed

    def status(self) -> dict[str, Any]:
        """The ``GET /v1/status`` document."""
        ...

    async def refresh(self) -> None:
        """Bring live figures (GPU and RAM) up to date before a status is read."""
        ...

    async def reload(self) -> dict[str, Any]:
        """Re-read the config; raise :class:`ReloadRefused` when it is invalid."""
        ...

    def operator_stopped(self, name: str, stopped: bool) -> None:
        """Remember that an operator stopped (True) or started (False) ``name``."""
        ...

    def log_source(self, name: str) -> ManagedProcess:
        """The process whose log ``name`` means: a provider, or a model's own process."""
        ...

    def provider_process(self, name: str) -> ManagedProcess:
        """Provider ``name``'s own process; :class:`UnknownProcess` says why there is none."""
        ...


class ControlAPI:
    """Builds the aiohttp application for a :class:`ControlBackend`."""

    def __init__(self, backend: ControlBackend) -> None:
        self.backend = backend

    def app(self) -> web.Application:
        """The aiohttp application with every route registered."""
        app = web.Application(middlewares=[self._errors])
        add_commands(app, ("daemon", "providers"), self)
        app.router.add_post("/v1/providers/{name}/{action}", self.unknown_action)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except UnknownProcess as exc:
            return error(404, "unknown_provider", exc.args[0])
        except ProcessClosed as exc:
            return error(409, "replaced", str(exc))
        except web.HTTPNotFound:
            return error(404, "not_found", f"no such endpoint: {request.method} {request.path}")
        except web.HTTPMethodNotAllowed:
            return error(
                405, "method_not_allowed", f"{request.method} is not allowed on {request.path}"
            )
        except web.HTTPException as exc:
            return error(exc.status, "http_error", exc.reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("control API: %s %s failed", request.method, request.path)
            return error(500, "internal", "helixd hit an internal error; see its log")

    def _audit(self, request: web.Request, what: str) -> None:
        uid = peer_uid(request.transport.get_extra_info("socket") if request.transport else None)
        log.info("control: uid %s requested %s", uid if uid is not None else "?", what)

    async def get_status(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.Status`."""
        await self.backend.refresh()
        return web.json_response(self.backend.status(), dumps=_dumps)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """:class:`helixd.protocol.Events`: the live feed as NDJSON."""
        if self.backend.stopping:
            return error(503, "stopping", "helixd is shutting down")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        try:
            async with self.backend.live_feed.follow() as follower:
                await response.prepare(request)
                # A snapshot at least every few seconds: a write to a reader gone fails.
                async for kind, text in follower.records():
                    await response.write(f'{{"type":"{kind}","data":{text}}}\n'.encode())
            await response.write_eof()
        except FeedRefused as exc:  # before anything was sent
            return error(503, exc.code, str(exc))
        except ConnectionError:
            pass  # helixctl top quit
        return response

    async def list_providers(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.ListProviders`."""
        processes = self.backend.supervisor.processes.values()
        return web.json_response({"providers": [p.info() for p in processes]}, dumps=_dumps)

    async def get_provider(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.GetProvider`."""
        process = self.backend.provider_process(request.match_info["name"])
        return web.json_response({"provider": process.info()}, dumps=_dumps)

    async def provider_pull(self, request: web.Request) -> web.StreamResponse:
        """:class:`helixd.protocol.PullModel`: Ollama's progress, as NDJSON."""
        self._audit(
            request, f"pull {request.query.get('model', '')!r} into {request.match_info['name']}"
        )
        return await pull(request, self.backend.supervisor)

    async def provider_start(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.StartProvider`."""
        return await self._provider_action(request, "start")

    async def provider_stop(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.StopProvider`."""
        return await self._provider_action(request, "stop")

    async def provider_restart(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.RestartProvider`."""
        return await self._provider_action(request, "restart")

    async def unknown_action(self, request: web.Request) -> web.Response:
        """``POST /v1/providers/{name}/ACTION`` for an action that is not a command."""
        action = request.match_info["action"]
        return error(404, "not_found", f"unknown action {action!r}; use start, stop or restart")

    async def _provider_action(self, request: web.Request, action: str) -> web.Response:
        """``POST /v1/providers/{name}/start|stop|restart[?wait=1&timeout=S]``."""
        name = request.match_info["name"]
        if self.backend.stopping:
            return error(503, "stopping", "helixd is shutting down")
        process = self.backend.provider_process(name)
        wait = request.query.get("wait", "0") not in ("0", "", "false")
        try:
            timeout = float(request.query.get("timeout", DEFAULT_WAIT_S))
        except ValueError:
            timeout = -1.0
        if not math.isfinite(timeout) or not 0 <= timeout <= 86400:
            return error(400, "bad_request", "timeout must be a number of seconds from 0 to 86400")
        self._audit(request, f"{action} {name}")
        # One change at a time: a reload must not replace a process under our feet.
        generation = None
        async with self.backend.supervisor.lock:
            if action == "stop":
                await process.stop()
            elif action == "start":
                generation = await process.start()
            else:
                generation = await process.restart()
            self.backend.operator_stopped(name, action == "stop")
        if wait and action != "stop":
            # The outcome of this start, never an earlier one (the `failed` it replaces).
            state = await process.wait_settled(timeout, generation)
            if state in (ProcessState.FAILED, ProcessState.STOPPED):
                info = process.info()
                why = info["message"] or "it exited"
                return error(500, "start_failed", f"{name} {state}: {why}", provider=info)
            if state != ProcessState.READY:
                return error(
                    504,
                    "timeout",
                    f"{name} is still {state} after {timeout:g} s",
                    provider=process.info(),
                )
        return web.json_response({"provider": process.info()}, dumps=_dumps)

    async def provider_logs(self, request: web.Request) -> web.StreamResponse:
        """:class:`helixd.protocol.ProviderLogs`: JSON, or NDJSON when following."""
        process = self.backend.log_source(request.match_info["name"])
        try:
            lines = min(int(request.query.get("lines", "100")), MAX_LOG_LINES)
        except ValueError:
            return error(400, "bad_request", "lines must be a whole number")
        if request.query.get("follow", "0") in ("0", "", "false"):
            tail = [line.as_json() for line in process.sink.tail(lines)]
            return web.json_response({"name": process.spec.name, "lines": tail}, dumps=_dumps)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            async with contextlib.aclosing(process.sink.lines(lines, FOLLOW_CHECK_S)) as stream:
                async for line in stream:
                    if line is not None:
                        await response.write((_dumps(line.as_json()) + "\n").encode())
                    elif request.transport is None or request.transport.is_closing():
                        break
            await response.write_eof()
        except ConnectionError:
            pass  # the follower went away (Ctrl-C on helixctl logs -f): nothing to report
        return response

    async def reload(self, request: web.Request) -> web.Response:
        """:class:`helixd.protocol.Reload`: 200 with the changes, or 422 naming what is wrong."""
        self._audit(request, "reload")
        if self.backend.stopping:
            return error(503, "stopping", "helixd is shutting down")
        try:
            result = await self.backend.reload()
        except ReloadRefused as exc:
            return error(422, "invalid_config", str(exc))
        return web.json_response(result, dumps=_dumps)
