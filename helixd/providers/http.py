"""The one HTTP client an adapter uses to drive its provider's own API on this host."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from helixd.providers.base import LoadError

API_TIMEOUT_S = 10.0


class ProviderHttp:
    """A lazily opened session with the provider's name in every error it raises."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session (opened on first use, again after :meth:`close`)."""
        if self._session is None or self._session.closed:
            # trust_env off: a proxy from the environment must never see local traffic.
            self._session = aiohttp.ClientSession(trust_env=False)
        return self._session

    async def call(
        self,
        method: str,
        url: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = API_TIMEOUT_S,
    ) -> tuple[int, str]:
        """``(status, text)`` of one request; :class:`LoadError` when nothing answers."""
        try:
            async with self.session().request(
                method,
                url,
                json=body,
                headers=dict(headers or {}),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            path = url.split("/", 3)[-1] if url.count("/") >= 3 else url
            raise LoadError(
                f"{self.provider} did not answer /{path}: {exc or type(exc).__name__}"
            ) from None

    async def get_json(
        self, url: str, *, headers: Mapping[str, str] | None = None, timeout: float = API_TIMEOUT_S
    ) -> Any:
        """The JSON of a 2xx answer; :class:`LoadError` for anything else."""
        status, text = await self.call("GET", url, headers=headers, timeout=timeout)
        if not 200 <= status < 300:
            raise LoadError(f"{self.provider}: GET {url}: HTTP {status}: {error_text(text)}")
        try:
            return json.loads(text)
        except ValueError:
            raise LoadError(f"{self.provider}: GET {url}: not JSON: {text[:200]!r}") from None

    async def close(self) -> None:
        """Close the session; the next call opens a new one."""
        if self._session is not None:
            await self._session.close()


def error_text(text: str) -> str:
    """The message of a provider's error body (``{"error": "…"}``, ``{"detail": …}``, …)."""
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            for key in ("error", "detail", "message"):
                value = data.get(key)
                if isinstance(value, dict):
                    value = value.get("message")
                if isinstance(value, str) and value:
                    return value
    return text.strip()[:300]
