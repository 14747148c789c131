"""Errors in the OpenAI shape, which every OpenAI client knows how to show, and the
OpenAI dialect's table of the codes it answers with and their HTTP statuses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from helixd.edge.message import Response
from helixd.errors import RESIDENCY_REFUSALS, QueueFull

# Where a dialect answers a code with another status than helixd's own API, and why.
DIALECT_DIFFERENCES: Final[Mapping[str, str]] = {
    QueueFull.code: "429 with Retry-After: OpenAI clients back off and retry a rate limit, "
    "while helixd's own API (which never queues) says 503, busy",
}

# The endpoint's codes (OpenAI dialect) → HTTP status: the one place they are decided. A
# handler that names a code with a literal status must agree (a test reads them); an
# upstream's own error status ("upstream_failed") passes through as it came.
OPENAI_STATUS: Final[Mapping[str, int]] = {
    # the request itself
    "invalid_json": 400,
    "missing_model": 400,
    "bad_encoding": 400,  # a Content-Encoding the body does not have
    "unsupported_encoding": 415,
    "invalid_api_key": 401,
    "model_not_found": 404,
    "unknown_endpoint": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "body_too_large": 413,
    # the HTTP itself (helixd.edge): junk, smuggling attempts, heads too large
    "malformed_request": 400,
    "headers_too_large": 431,
    "internal_error": 500,
    "budget_exceeded": 429,
    # the models: residency's refusals say as helixd's own API does, but for a full queue
    **{refusal.code: refusal.status for refusal in RESIDENCY_REFUSALS},
    QueueFull.code: 429,
    "model_not_ready": 503,
    # the upstream
    "upstream_unreachable": 502,
}
PASSED_THROUGH: Final = frozenset({"upstream_failed"})

# HTTP status → OpenAI error type.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """The OpenAI error type for a status: a client's mistake below 500, else the server's."""
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def openai_error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> Response:
    """``{"error": {"message", "type", "code"}}`` with ``status``."""
    body = {"error": {"message": message, "type": error_type(status), "code": code}}
    return Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def sse_error(message: str, code: str) -> bytes:
    """The event that ends a stream that failed after its first byte."""
    body = {"error": {"message": message, "type": "server_error", "code": code}}
    return f"data: {json.dumps(body)}\n\n".encode()
