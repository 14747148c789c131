"""TabbyAPI: one server that holds one model at a time, swapped through its admin API.

helixd supervises ``python main.py`` (started without a model, so it listens at once)
and drives its model:

- load: ``POST /v1/model/load {"model_name"}`` with the admin key; TabbyAPI answers with
  a server-sent-event stream of progress that ends when the model is loaded (or with an
  error), then ``GET /v1/model`` must name it;
- unload: ``POST /v1/model/unload`` (admin), then ``/v1/model`` must name none;
- one at a time: the adapter says so (``one_model_at_a_time``), so the scheduler evicts
  the model the server holds before loading another of its models — and a pinned or
  busy one blocks the swap instead of being dropped under a request;
- memory: the model lives in the server process itself (exllama loads in-process), so
  the scheduler measures the server's process tree;
- lost: the server leaving ``ready``, or ``/v1/model`` naming another model or none at
  the next check.

Keys: the provider's ``api_key_env`` names a variable holding the admin key; without
it, helixd reads ``admin_key`` from the ``api_tokens.yml`` TabbyAPI writes in its
working directory (the provider's ``cwd``) on first start. The admin key is also sent
with proxied requests (TabbyAPI accepts it wherever the API key is accepted).

Checked against TabbyAPI at theroyallab/tabbyAPI@e632af4 (``endpoints/core/router.py``,
``common/auth.py``; see shared/PROVIDERS.md) through the protocol fake
``tests/fakes/tabby_server.py``; not against a real TabbyAPI, whose exllama backends
need a CUDA GPU the test machine does not have.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from helixd.providers.base import LoadError, ModelTarget
from helixd.providers.http import error_text
from helixd.providers.one_server import OneServerAdapter

LOAD_TIMEOUT_S = 600.0
TOKENS_FILE = "api_tokens.yml"


class TabbyAdapter(OneServerAdapter):
    """The one model of a supervised TabbyAPI server."""

    one_model_at_a_time = True
    loaded_list = "/v1/model"

    def _admin_key(self) -> str | None:
        if self.config.api_key_env:
            return os.environ.get(self.config.api_key_env) or None
        tokens = (self.config.cwd or Path.cwd()) / TOKENS_FILE
        try:
            text = tokens.read_text()
        except OSError:
            return None
        # api_tokens.yml is two "key: value" lines; no YAML library for that.
        found = re.search(r"^admin_key:\s*['\"]?([^'\"\s#]+)", text, re.MULTILINE)
        return found.group(1) if found else None

    def _auth(self) -> dict[str, str]:
        key = self._admin_key()
        return {"x-admin-key": key, "Authorization": f"Bearer {key}"} if key else {}

    def upstream_headers(self, model: str) -> dict[str, str]:
        """The key TabbyAPI wants on every call."""
        key = self._admin_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _key_problem(self, status: int) -> LoadError:
        where = (
            f"the variable {self.config.api_key_env}"
            if self.config.api_key_env
            else f"admin_key in {(self.config.cwd or Path.cwd()) / TOKENS_FILE}"
        )
        return LoadError(
            f"{self.provider} refused helixd's admin key (HTTP {status}); helixd reads it "
            f"from {where}"
        )

    async def loaded_ids(self, base: str) -> set[str]:
        """``GET /v1/model``: the one model's id, or none."""
        status, text = await self.http.call("GET", base + "/v1/model", headers=self._auth())
        if status in (401, 403):
            raise self._key_problem(status)
        if status in (400, 503):
            return set()  # "No models are currently loaded." (also while one loads)
        if status != 200:
            raise LoadError(f"{self.provider}: /v1/model answered HTTP {status}: {text[:200]}")
        try:
            card = json.loads(text)
        except ValueError:
            raise LoadError(f"{self.provider}: /v1/model answered {text[:200]!r}") from None
        return {str(card["id"])} if isinstance(card, dict) and card.get("id") else set()

    async def _load_on(self, base: str, target: ModelTarget) -> None:
        """Load through the admin API and read its progress stream to the end."""
        status, text = await self.http.call(
            "POST",
            base + "/v1/model/load",
            body={"model_name": target.model_id},
            headers=self._auth(),
            timeout=LOAD_TIMEOUT_S,
        )
        if status in (401, 403):
            raise self._key_problem(status)
        problem = error_text(text) if status != 200 else _stream_error(text)
        if problem is not None:
            raise self._load_failed(target.model_id, problem)
        await self._confirm_loaded(base, target.model_id)

    async def _unload_on(self, base: str, model_id: str) -> None:
        """``POST /v1/model/unload`` (admin)."""
        try:
            status, _ = await self.http.call(
                "POST", base + "/v1/model/unload", headers=self._auth()
            )
        except LoadError:
            return  # the server went away: the wait that follows ends at once
        if status in (401, 403):
            raise self._key_problem(status)

    def memory_pids(self, model: str) -> list[int]:
        """The server itself holds the model."""
        pid = self._server_pid()
        return [pid] if pid is not None and model in self._ids else []


def _stream_error(text: str) -> str | None:
    """The error a load's SSE progress stream ended with, if it did not finish."""
    finished = False
    last: Any = None
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        try:
            event = json.loads(payload)
        except ValueError:
            continue
        last = event
        if isinstance(event, dict):
            if event.get("error"):
                error = event["error"]
                return str(error.get("message") if isinstance(error, dict) else error)
            if event.get("status") == "finished":
                finished = True
    if finished:
        return None
    return f"the progress stream ended without 'finished' (last event: {last!r})"
