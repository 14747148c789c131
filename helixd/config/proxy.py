"""``[proxy]``: the local OpenAI- and Ollama-compatible endpoint apps call."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator, model_validator

from helixd.config.types import Seconds, Strict, parse_duration_s

DEFAULT_LISTEN = "127.0.0.1:11400"


def split_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:11400"`` / ``"[::1]:11400"`` → (host, port); ValueError when malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT such as '127.0.0.1:11400'; got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:  # 0: any free port (status shows which)
        raise ValueError(f"expected a TCP port from 0 to 65535; got {port}")
    return host.strip("[]"), port


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses: nobody else can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ProxyConfig(Strict):
    """The endpoint: where it listens, who may call it, and its bounds."""

    listen: str = DEFAULT_LISTEN
    # Bearer keys; required when ``listen`` is not a loopback address.
    api_keys: list[str] = Field(default_factory=list)
    # Listening beyond loopback without keys must be asked for by name.
    allow_unauthenticated: bool = False
    max_body_mib: int = Field(default=32, ge=1, le=1024)
    # A client must send its whole request body within this long (slowloris guard).
    read_timeout_s: Seconds = 60.0
    # A request head (line and headers) must be complete within this long of its start.
    header_timeout_s: Seconds = 20.0
    # A kept-alive connection with no request for this long is closed, and so is one
    # whose client reads nothing of its answer for this long.
    idle_timeout_s: Seconds = 75.0
    # Connections open at once; more are reset at once (within the descriptor limit,
    # less a reserve for the control socket and the model servers).
    max_connections: int = Field(default=4096, ge=1, le=1_000_000)
    # One access-log line per request (helixd.access), or none; of the requests that
    # succeed, the share written (refusals and failures always are). Metrics count all.
    access_log: bool = True
    access_log_sample: float = Field(default=1.0, ge=0.0, le=1.0)
    # A request line and its headers, in all, and the number of header lines (else 431).
    max_header_kib: int = Field(default=32, ge=1, le=1024)
    max_headers: int = Field(default=100, ge=1, le=10_000)
    # How long an upstream may take to start answering once the model is loaded.
    upstream_timeout_s: Annotated[
        float, BeforeValidator(parse_duration_s), Field(gt=0, le=86400)
    ] = 600.0

    # A streaming request that waits longer than this for its model gets SSE comment
    # lines at this pace, so proxies and clients with idle timeouts keep the connection.
    sse_keepalive_s: Seconds = 10.0
    # Health-aware failover: a model whose requests fail this many times in a row is
    # skipped by routes for cooldown_s (it shows in status).
    failures_before_cooldown: int = Field(default=3, ge=1, le=1000)
    cooldown_s: Seconds = 60.0

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if len(key) < 16 or key != key.strip():
                raise ValueError(
                    "expected keys of at least 16 characters without surrounding spaces, "
                    "e.g. from 'openssl rand -hex 24'"
                )
        return value

    @model_validator(mode="after")
    def _keys_beyond_loopback(self) -> ProxyConfig:
        host, _ = split_listen(self.listen)
        if not is_loopback(host) and not self.api_keys and not self.allow_unauthenticated:
            raise ValueError(
                f"listen = {self.listen!r} is reachable from other hosts: set api_keys, "
                "or allow_unauthenticated = true if the network is trusted"
            )
        return self
