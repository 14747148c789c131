"""Errors in the OpenAI shape, which every OpenAI client knows how to show."""

from __future__ import annotations

import json

from aiohttp import web

# HTTP status → OpenAI error type.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """The OpenAI error type for a status: a client's mistake below 500, else the server's."""
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def openai_error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> web.Response:
    """``{"error": {"message", "type", "code"}}`` with ``status``."""
    body = {"error": {"message": message, "type": error_type(status), "code": code}}
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def sse_error(message: str, code: str) -> bytes:
    """The event that ends a stream that failed after its first byte."""
    body = {"error": {"message": message, "type": "server_error", "code": code}}
    return f"data: {json.dumps(body)}\n\n".encode()
