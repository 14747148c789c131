"""What every part of the control API shares: the error shape, and routes from the protocol.

The routes are not written here but read from :mod:`helixd.protocol`, the one list of
commands that ``helixctl`` builds its requests from: each part of the API registers the
commands of its groups, each with the handler of the command's name.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from helixd.protocol import COMMANDS, GET

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, code: str, message: str, **details: Any) -> web.Response:
    """The one error shape of the API."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return web.json_response({"error": body}, status=status)


def dumps(data: Any) -> str:
    """Compact JSON, for the larger documents."""
    return json.dumps(data, indent=None, separators=(",", ":"))


def add_commands(app: web.Application, groups: tuple[str, ...], handlers: object) -> None:
    """Route each command of ``groups`` to the method of ``handlers`` named as it is.

    A missing handler is an AttributeError at start-up, never a 404 at run time.
    """
    for command in COMMANDS:
        if command.group not in groups:
            continue
        handler: Handler = getattr(handlers, command.name)
        if command.method == GET:
            app.router.add_get(command.path, handler)  # and HEAD, as aiohttp does
        else:
            app.router.add_route(command.method, command.path, handler)
