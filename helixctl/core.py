"""The click-free core of helixctl: options, API calls, output, and ``status``.

``helixctl status`` is what scripts and monitoring poll, and importing click alone costs
about 40 ms on a small machine (it imports ``inspect`` and ``typing``), so ``main`` runs
``status`` from here without click when the command line is that simple. Every other
command line, ``--help`` included, goes through the click CLI in ``helixctl.cli``, which
uses these same functions, so both paths print the same thing.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

from helixctl.transport import DEFAULT, Client, ProtocolError, Timeout, Unreachable, find_socket


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


EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


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

    def call(self, method: str, path: str, timeout: Timeout = DEFAULT) -> Any:
        """Call the API; exit 3 when unreachable, 1 on an API error (printing it)."""
        try:
            status, document = self.client.call(method, path, timeout)
        except Unreachable as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        except ProtocolError as exc:
            fail(str(exc), EXIT_FAILED)
        if status >= 400:
            self.api_error(document)
        return document

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


def fail(message: str, code: int) -> NoReturn:
    """Print ``helixctl: message`` to stderr and exit with ``code``."""
    echo(f"helixctl: {message}", err=True)
    sys.exit(code)


def show_status(ctx: Context) -> None:
    """``helixctl status``: the daemon's one-line summary, providers, devices and models."""
    from helixctl.render import (
        MODEL_HEADERS,
        PROVIDER_HEADERS,
        device_lines,
        duration,
        model_rows,
        provider_rows,
        table,
    )

    doc = ctx.call("GET", "/v1/status")
    if ctx.as_json:
        ctx.emit(doc, "")
        return
    echo(
        f"helixd {doc['version']} ({doc['mode']} mode), pid {doc['pid']}, "
        f"up {duration(doc['uptime_s'])}, config {doc['config']}"
    )
    if doc.get("proxy"):
        echo(f"endpoint {doc['proxy']['url']}/v1 (OpenAI-compatible)")
    echo(doc["summary"])
    ops = _operations_line(doc)
    if ops:
        echo(ops)
    if doc["providers"]:
        echo("")
        echo(table(PROVIDER_HEADERS, provider_rows(doc["providers"])))
    devices = doc.get("devices")
    if devices:
        echo("")
        echo("\n".join(device_lines(devices)))
    if doc.get("models"):
        echo("")
        echo(table(MODEL_HEADERS, model_rows(doc["models"])))


def _operations_line(doc: dict[str, Any]) -> str:
    """``jobs: 6 (last run failed: backup); alerts: 1 error (helixctl alerts)``."""
    jobs, alerts = doc.get("jobs"), doc.get("alerts")
    if not jobs:
        return ""
    text = f"jobs: {jobs['count']}"
    notes = []
    if jobs.get("running"):
        notes.append("running: " + ", ".join(jobs["running"]))
    if jobs.get("failed"):
        notes.append("last run failed: " + ", ".join(jobs["failed"]))
    text += f" ({'; '.join(notes)})" if notes else ""
    active = {k: n for k, n in (alerts or {}).items() if n}
    if active:
        order = ("critical", "error", "warning", "info")
        counts = ", ".join(f"{active[s]} {s}" for s in order if s in active)
        return f"{text}; alerts: {counts} (helixctl alerts)"
    return f"{text}; alerts: none"


def _fast_status_args(argv: list[str]) -> tuple[str | None, bool] | None:
    """``(socket, as_json)`` for ``[--json] [--socket PATH] status [--json]``, else None."""
    socket_path, as_json, seen_status = os.environ.get("HELIXD_SOCKET") or None, False, False
    args = iter(argv)
    for arg in args:
        if arg == "--json":
            as_json = True
        elif arg == "--socket" and not seen_status:
            socket_path = next(args, None)
            if socket_path is None:
                return None
        elif arg.startswith("--socket=") and not seen_status:
            socket_path = arg.split("=", 1)[1]
        elif arg == "status" and not seen_status:
            seen_status = True
        else:
            return None
    return (socket_path, as_json) if seen_status else None


def main() -> None:
    """Entry point of the ``helixctl`` command."""
    fast = _fast_status_args(sys.argv[1:])
    if fast is not None:
        try:
            show_status(Context(*fast))
        except KeyboardInterrupt:
            sys.exit(130)
        return
    from helixctl.cli import cli

    cli(prog_name="helixctl")
