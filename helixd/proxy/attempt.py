"""One attempt of a proxied request: how it can fail, and what became of the request."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from helixd.config.routes import FailureClass

# Residency's refusals, as an API client should see them, and as a route escalates them.
RESIDENCY_STATUS = {"queue_full": 429, "does_not_fit": 507, "timeout": 504, "model_failed": 503}
FAILURE_OF: dict[str, FailureClass] = {
    "queue_full": "overloaded",
    "timeout": "timeout",
    "does_not_fit": "error",
    "model_failed": "error",
}


class Failed(Exception):
    """One attempt failed before anything reached the client; ``response`` says how."""

    def __init__(self, kind: str, response: web.Response) -> None:
        super().__init__(kind)
        self.kind = kind
        self.response = response


class Refused(Exception):
    """A request refused before any model was tried; each dialect words it its own way."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass
class Outcome:
    """What became of a request, for the access log."""

    status: int
    model: str | None = None
    attempts: int = 0
    first_byte_s: float | None = None
