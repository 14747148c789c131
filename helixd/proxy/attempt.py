"""One attempt of a proxied request: how it can fail, and what became of the request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from helixd.config.routes import FailureClass
from helixd.edge.message import Request, Response
from helixd.errors import EndpointError
from helixd.proxy.ollama import Translation
from helixd.proxy.routing import Attempts

# How an attempt failed: a class a route may escalate, or "final" (an unknown model,
# helixd shutting down), after which no other candidate can help.
FailureKind = FailureClass | Literal["final"]

# Residency's refusals, as a route escalates them (their statuses: each dialect's table).
FAILURE_OF: dict[str, FailureClass] = {
    "queue_full": "overloaded",
    "timeout": "timeout",
    "does_not_fit": "error",
    "model_failed": "error",
}


# nginx's status for a request whose client closed the connection before the answer.
CLIENT_CLOSED = 499


class Failed(EndpointError):
    """One attempt failed before anything reached the client; ``response`` says how."""

    code = "attempt_failed"

    def __init__(self, kind: FailureKind, response: Response) -> None:
        super().__init__(kind)
        self.kind = kind
        self.response = response


class Refused(EndpointError):
    """A request refused before any model was tried; each dialect words it its own way,
    with the status its table gives ``code`` (the wire code of this refusal)."""

    code = "request_refused"

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class Outcome:
    """What became of a request, for the access log."""

    status: int
    model: str | None = None
    attempts: int = 0
    first_byte_s: float | None = None
    # Besides the status: "upstream_cut" (a stream that died mid-way), "client_gone".
    error: str | None = None

    def client_gone(self) -> None:
        """The client went away; before any answer, that is nginx's 499, not a 500."""
        self.error = "client_gone"
        if self.first_byte_s is None:
            self.status = CLIENT_CLOSED


@dataclass
class Exchange:
    """One client request on its way through the endpoint, and what became of it.

    ``translation``: set for an Ollama-dialect request (how to speak OpenAI upstream).
    """

    request: Request
    body: dict[str, Any]
    raw: bytes
    plan: Attempts
    started: float
    translation: Translation | None = None
    outcome: Outcome = field(default_factory=lambda: Outcome(status=500))


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """A finished request, as the endpoint tells its watchers (the live view)."""

    time: float  # wall clock, when it ended
    method: str
    path: str
    asked: str  # the name the client asked for: a model, an alias or a route
    route: str | None
    model: str | None  # the model that answered last (None: none was tried)
    status: int
    ms: float
    ttft_ms: float | None
    attempts: int

    def as_json(self) -> dict[str, Any]:
        """The record for the live view's feed."""
        return {
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "asked": self.asked,
            "route": self.route,
            "model": self.model,
            "status": self.status,
            "ms": round(self.ms, 1),
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 1),
            "attempts": self.attempts,
        }
