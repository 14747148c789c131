"""Remote providers: an OpenAI-compatible server helixd does not run (another host, a cloud).

Nothing is started or stopped; "loading" a model checks that the server answers and
serves it, "unloading" only forgets it. The API key comes from an environment variable
named in the config, never from the config itself.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import aiohttp

from helixd.config import ProviderConfig
from helixd.providers.base import LoadError, ModelAdapter, ModelTarget

log = logging.getLogger("helixd.providers")

CHECK_TIMEOUT_S = 10.0


class RemoteAdapter(ModelAdapter):
    """Models served elsewhere: reachable or not, never resident here."""

    shape = "multi-model"
    holds_memory = False

    def __init__(self, provider: str, config: ProviderConfig) -> None:
        super().__init__(provider)
        assert config.url is not None  # config requires it for kind "remote"
        self.config = config
        self.url = config.url
        self._ids: dict[str, str] = {}
        self._key: str | None = None
        if config.api_key_env:
            self._key = os.environ.get(config.api_key_env) or None
            if self._key is None:
                log.warning(
                    "providers.%s: %s is not set in helixd's environment; calling %s "
                    "without an API key",
                    provider,
                    config.api_key_env,
                    self.url,
                )

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    async def load(self, target: ModelTarget) -> None:
        """Check the server answers ``GET /v1/models`` and lists the model (if it lists)."""
        timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.url + "/v1/models", headers=self._auth()) as response,
            ):
                if response.status != 200:
                    text = (await response.text())[:300]
                    raise LoadError(f"{self.url}/v1/models answered HTTP {response.status}: {text}")
                listing: Any = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LoadError(f"{self.url} did not answer: {exc or type(exc).__name__}") from None
        served = [m.get("id") for m in (listing or {}).get("data") or [] if isinstance(m, dict)]
        if served and target.model_id not in served:
            shown = ", ".join(str(s) for s in served[:20])
            raise LoadError(f"{self.url} does not serve {target.model_id!r}; it serves: {shown}")
        self._ids[target.name] = target.model_id

    async def unload(self, model: str) -> None:
        """Forget the model (nothing runs here)."""
        self._ids.pop(model, None)

    def upstream(self, model: str) -> str | None:
        """The remote base URL while the model is 'loaded'."""
        return self.url if model in self._ids else None

    def upstream_model(self, model: str) -> str:
        """The remote's id of the model."""
        return self._ids.get(model, model)

    def upstream_headers(self, model: str) -> dict[str, str]:
        """The API key, as a Bearer token."""
        return self._auth()

    async def close(self) -> None:
        """Nothing to stop."""
        self._ids.clear()
