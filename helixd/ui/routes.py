"""The live view's routes on the endpoint: the page, its event stream, logs and actions.

``/ui/`` and ``/ui/static/*`` are the page (no secret in them: served without a key so
the page can ask for one); ``/ui/api/events`` streams the live feed as server-sent
events, ``/ui/api/logs/NAME`` follows a provider's or a model's log, and
``POST /ui/api/actions`` does what the page's buttons ask. Every request passes
:func:`helixd.ui.guard.refusal` first; the API paths also pass the endpoint's API-key
check. Errors are the endpoint's OpenAI shape, ``{"error": {"message", "code"}}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol

from helixd.config import ProxyConfig, UiConfig
from helixd.config.proxy import split_listen
from helixd.edge.message import Answer, Request, Response, StreamResponse, json_response
from helixd.edge.routes import Routes
from helixd.errors import HelixError, ResidencyError, StartupError
from helixd.proxy.errors import openai_error
from helixd.supervisor.process import ManagedProcess
from helixd.ui.actions import ACTIONS, ActionBackend, act
from helixd.ui.feed import FeedRefused, LiveFeed
from helixd.ui.guard import Policy, refusal
from helixd.ui.redact import Redactor

log = logging.getLogger("helixd.ui")

STATIC = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
# The page runs its own script and style only, talks to its own origin only, and may not
# be framed (clickjacking its buttons).
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
# An action's refusals: residency's carry their own status; the rest are names or races.
ACTION_STATUS = {"unknown_provider": 404, "unknown_job": 404, "replaced": 409}
LOG_LINES = 200
MAX_LOG_LINES = 2000
MAX_ACTION_BYTES = 4096
# A quiet log follow sends a comment this often, so a vanished tab is noticed.
LOG_KEEPALIVE_S = 15.0

Handler = Callable[[Request], Awaitable[Answer]]


class UiBackend(ActionBackend, Protocol):
    """What the view needs from the daemon beyond the actions."""

    def log_source(self, name: str) -> ManagedProcess:
        """The process whose log ``name`` means: a provider, or a model's own process."""
        ...


def is_page(path: str) -> bool:
    """The page's own files: served without an API key (they hold no secret)."""
    return path in ("/ui", "/ui/") or path.startswith("/ui/static/")


class LiveView:
    """Serves the page and its API for one daemon."""

    def __init__(
        self,
        feed: LiveFeed,
        backend: UiBackend,
        proxy: ProxyConfig,
        port: Callable[[], int],
        redact: Redactor,
    ) -> None:
        self.feed = feed
        self.backend = backend
        self.actions = True
        self.redact = redact
        self._listen_host = split_listen(proxy.listen)[0]
        self._keys = bool(proxy.api_keys)
        self._port = port
        self._files = _read_static()

    def configure(self, ui: UiConfig, redact: Redactor) -> None:
        """Take up a reloaded ``[ui]`` (``actions``) and the secrets to mask."""
        self.actions = ui.actions
        self.redact = redact

    def add_routes(self, routes: Routes) -> None:
        """The page and its API, each behind :meth:`_guarded`."""
        routes.add_get("/ui", self._guarded(self.redirect))
        routes.add_get("/ui/", self._guarded(self.page))
        routes.add_get("/ui/static/{file}", self._guarded(self.static))
        routes.add_get("/ui/api/events", self._guarded(self.events))
        routes.add_get("/ui/api/logs/{name}", self._guarded(self.logs))
        routes.add_post("/ui/api/actions", self._guarded(self.action))

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Answer:
            policy = Policy(self._listen_host, self._port(), self._keys)
            why = refusal(policy, request.method, request.path, request.headers)
            if why is not None:
                log.warning("live view: refused %s %s: %s", request.method, request.path, why)
                return openai_error(403, why, "forbidden")
            return await handler(request)

        return guarded

    # -- the page ----------------------------------------------------------------------

    async def redirect(self, request: Request) -> Answer:
        return Response(308, headers={"Location": "/ui/"})

    async def page(self, request: Request) -> Answer:
        return self._file("index.html")

    async def static(self, request: Request) -> Answer:
        name = request.match_info["file"]
        if name == "index.html" or name not in self._files:
            return openai_error(404, f"no such file: {request.path}", "unknown_endpoint")
        return self._file(name)

    def _file(self, name: str) -> Response:
        body, kind = self._files[name]
        return Response(body=body, content_type=kind, charset="utf-8", headers=HEADERS)

    # -- the feed ----------------------------------------------------------------------

    async def events(self, request: Request) -> Answer:
        """The live feed as server-sent events: ``snapshot`` and ``request`` events."""
        response = StreamResponse(headers=STREAM_HEADERS)
        try:
            async with self.feed.follow() as follower:
                await response.prepare(request)
                async for kind, text in follower.records():
                    await response.write(f"event: {kind}\ndata: {text}\n\n".encode())
        except FeedRefused as exc:  # before anything was sent
            return openai_error(503, str(exc), exc.code)
        except ConnectionError:
            return response  # the tab closed
        await response.write_eof()
        return response

    async def logs(self, request: Request) -> Answer:
        """A provider's or model's log: the last ``lines``, then each new one, redacted."""
        name = request.match_info["name"]
        try:
            process = self.backend.log_source(name)
        except HelixError as exc:
            return openai_error(404, str(exc.args[0]), exc.code)
        try:
            count = max(0, min(int(request.query.get("lines", LOG_LINES)), MAX_LOG_LINES))
        except ValueError:
            return openai_error(400, "lines must be a whole number", "bad_request")
        response = StreamResponse(headers=STREAM_HEADERS)
        await response.prepare(request)
        reason = "the process was replaced or helixd is stopping"
        try:
            async with contextlib.aclosing(process.sink.lines(count, LOG_KEEPALIVE_S)) as stream:
                async for line in stream:
                    if line is None:  # quiet: a comment, so a vanished tab is noticed
                        await response.write(b": keep-alive\n\n")
                    else:
                        await response.write(self._log_event(line.as_json()))
            end = json.dumps({"reason": reason})
            await response.write(f"event: end\ndata: {end}\n\n".encode())
            await response.write_eof()
        except ConnectionError:
            pass  # the panel closed
        return response

    def _log_event(self, line: dict[str, Any]) -> bytes:
        line = line | {"text": self.redact(str(line.get("text", "")))}
        return f"event: line\ndata: {json.dumps(line)}\n\n".encode()

    # -- actions -----------------------------------------------------------------------

    async def action(self, request: Request) -> Answer:
        """``{"action", "target"}``: one of :data:`ACTIONS` on a configured name."""
        if not self.actions:
            return openai_error(
                403, "actions are off for the page ([ui] actions = false)", "actions_off"
            )
        # read(n) answers with what has arrived so far: loop until the end or past the cap.
        raw = bytearray()
        while len(raw) <= MAX_ACTION_BYTES and (
            chunk := await request.content.read(MAX_ACTION_BYTES + 1 - len(raw))
        ):
            raw += chunk
        if len(raw) > MAX_ACTION_BYTES:
            return openai_error(413, "an action's body is a few bytes of JSON", "body_too_large")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        action = body.get("action") if isinstance(body, dict) else None
        target = body.get("target") if isinstance(body, dict) else None
        if action not in ACTIONS or not isinstance(target, str) or not target:
            return openai_error(
                400,
                f'expected {{"action": one of {", ".join(ACTIONS)}, "target": a name}}',
                "bad_request",
            )
        log.info("live view: %s %s requested from %s", action, target, request.remote)
        try:
            done = await act(self.backend, action, target)
        except HelixError as exc:
            if isinstance(exc, ResidencyError):
                status = exc.status
            else:
                status = ACTION_STATUS.get(exc.code, 500)
            return openai_error(status, str(exc.args[0]) if exc.args else exc.code, exc.code)
        return json_response({"ok": done.ok, "message": done.message})


def _read_static() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once; missing ones stop helixd with what to do."""
    folder = resources.files("helixd.ui").joinpath("static")
    files = {}
    for name, kind in STATIC.items():
        try:
            files[name] = (folder.joinpath(name).read_bytes(), kind)
        except OSError as exc:
            raise StartupError(
                f"the live view's page is missing from this installation ({name}: "
                f"{exc.strerror or exc}); reinstall helixd, or set [ui] enabled = false"
            ) from None
    return files


def ui_off(routes: Routes) -> None:
    """Where the page would be, say why it is not there and how to turn it on."""

    async def off(request: Request) -> Answer:
        return openai_error(
            404,
            "the live view is off: [ui] enabled = false, or the endpoint listens beyond "
            "loopback without [proxy] api_keys; set api_keys, or [ui] enabled = true",
            "ui_off",
        )

    routes.add_get("/ui", off)
    routes.add_get("/ui/{tail:.*}", off)
