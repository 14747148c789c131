"""What every helixctl command shares, without click: options, requests, output, exits.

Requests are built from :mod:`helixd.protocol`, the list of control commands the
daemon serves, so no path is written twice. Nothing here imports click, aiohttp,
pydantic or any other helixd module: ``helixctl status`` runs on this alone.
"""

from __future__ import annotations

import json
import os
import sys

from helixctl.transport import (
    DEFAULT,
    Client,
    ProtocolError,
    Response,
    Timeout,
    Unreachable,
    find_socket,
)

# typing.TYPE_CHECKING without importing typing, which costs ``helixctl status`` some
# 3 ms of its start-up (the idiom PEP 781 names; mypy reads it the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn

    from helixd.protocol import Command

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


def echo(text: str, err: bool = False, nl: bool = True) -> None:
    """Print a line; a closed pipe (``helixctl status | head -1``) is not an error."""
    stream = sys.stderr if err else sys.stdout
    try:
        stream.write(text + "\n" if nl else text)
        stream.flush()
    except BrokenPipeError:
        # Point stdout at devnull so the interpreter's own flush at exit stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        sys.exit(0)


def fail(message: str, code: int) -> NoReturn:
    """Print ``helixctl: message`` to stderr and exit with ``code``."""
    echo(f"helixctl: {message}", err=True)
    sys.exit(code)


class Context:
    """Options shared by every command."""

    def __init__(self, socket_path: str | None, as_json: bool) -> None:
        self.socket_path = socket_path
        self.as_json = as_json
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """The control-API client (created on first use)."""
        if self._client is None:
            path, looked_at = find_socket(self.socket_path)
            self._client = Client(path, looked_at)
        return self._client

    def call(
        self,
        command: type[Command],
        query: Mapping[str, str] | None = None,
        timeout: Timeout = DEFAULT,
        **params: str,
    ) -> Any:
        """Send ``command`` (``params`` fill its path); its JSON answer.

        Exits 3 when helixd is unreachable, 1 on an API error (printing it).
        """
        try:
            status, document = self.client.call(
                command.method, command.target(query, **params), timeout
            )
        except Unreachable as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        except ProtocolError as exc:
            fail(str(exc), EXIT_FAILED)
        if status >= 400:
            self.api_error(document)
        return document

    def stream(
        self, command: type[Command], query: Mapping[str, str] | None = None, **params: str
    ) -> Response:
        """Send ``command`` and return its answer unread, for NDJSON streams (no timeout).

        Exits as :meth:`call` does; the caller closes the response.
        """
        try:
            response = self.client.request(
                command.method, command.target(query, **params), timeout=None
            )
        except Unreachable as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        if response.status >= 400:
            self.api_error(response.json())
        return response

    def api_error(self, document: Any) -> NoReturn:
        """Print an API error (as JSON with --json) and exit 1."""
        if self.as_json:
            echo(json.dumps(document, indent=2))
            sys.exit(EXIT_FAILED)
        err = (document or {}).get("error", {}) if isinstance(document, dict) else {}
        message = err.get("message", "helixd answered with an error")
        details = err.get("details") or {}
        tail = (details.get("provider") or details.get("model") or {}).get("log_tail")
        if tail:
            message += "\nlast log lines:\n  " + "\n  ".join(tail)
        fail(message, EXIT_FAILED)

    def emit(self, document: Any, human: str) -> None:
        """Print JSON with --json, else the human text."""
        echo(json.dumps(document, indent=2) if self.as_json else human)
