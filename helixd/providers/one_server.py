"""One long-lived server, many models: what Ollama, LocalAI and TabbyAPI adapters share.

The provider's server process is supervised like any other (restart with backoff, logs,
probe); the adapter looks it up on each use (a reload may replace it) and drives its
models through its HTTP API. What the kinds share lives here: waiting for the server,
the models booked as loaded (helixd's name → the server's id), losing them all when the
server leaves ``ready``, and a periodic check that each is still loaded there.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import ClassVar

from helixd.config import ProviderConfig
from helixd.providers.base import LoadError, ModelAdapter, ModelTarget, says_out_of_memory
from helixd.providers.http import ProviderHttp
from helixd.supervisor.process import ManagedProcess, ProcessState

log = logging.getLogger("helixd.providers")

_SERVING = frozenset({ProcessState.READY, ProcessState.UNHEALTHY})

ServerLookup = Callable[[], ManagedProcess | None]

# How long an unloaded model may take to leave the server's list (its process stops).
UNLOAD_WAIT_S = 30.0


class OneServerAdapter(ModelAdapter):
    """The models of one supervised server that loads and unloads them through its API."""

    shape = "multi-model"
    # The API call that lists what the server holds, for messages ("/api/ps").
    loaded_list: ClassVar[str]

    def __init__(self, provider: str, config: ProviderConfig, server: ServerLookup) -> None:
        super().__init__(provider)
        self.config = config
        self._server = server
        self.http = ProviderHttp(provider)
        self._ids: dict[str, str] = {}  # loaded model → the server's name for it
        self._loading: set[str] = set()
        self._watch: asyncio.Task[None] | None = None

    # -- the server ----------------------------------------------------------------------

    def _base(self) -> str | None:
        process = self._server()
        if process is None or process.state not in _SERVING:
            return None
        return f"http://{process.spec.host}:{process.spec.port}"

    def _server_pid(self) -> int | None:
        process = self._server()
        return process.pid if process is not None and process.state in _SERVING else None

    async def _ready_base(self) -> str:
        """The server's URL once it is ready; :class:`LoadError` if it will not be."""
        process = self._server()
        if process is None:
            raise LoadError(f"provider {self.provider} is not running (removed by a reload?)")
        if process.state not in _SERVING:
            await process.wait_settled(process.spec.start_seconds + 5)
        base = self._base()
        if base is None:
            why = process.message or str(process.state)
            raise LoadError(
                f"provider {self.provider} is {process.state} ({why}); "
                f"see helixctl logs {self.provider}, start it with helixctl start {self.provider}"
            )
        return base

    # -- what every kind shares ----------------------------------------------------------

    def upstream(self, model: str) -> str | None:
        """The server's URL while the model is loaded there."""
        return self._base() if model in self._ids else None

    def upstream_model(self, model: str) -> str:
        """The server's name of the model (its ``id``)."""
        return self._ids.get(model, model)

    def server_url(self) -> str | None:
        """The server's URL while it serves (loaded models or not)."""
        return self._base()

    async def load(self, target: ModelTarget) -> None:
        """Wait for the server, book the model, then have the kind load it there.

        Booked before asking the server: a load that fails or is cancelled half way is
        then unloaded by the scheduler's clean-up instead of staying there unseen. Until
        the load ends the periodic check leaves it alone (the server lists it only then).
        """
        base = await self._ready_base()
        self._ids[target.name] = target.model_id
        self._loading.add(target.name)
        try:
            await self._load_on(base, target)
        finally:
            self._loading.discard(target.name)
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watch_loaded(), name=f"{self.provider}:watch")

    @abc.abstractmethod
    async def _load_on(self, base: str, target: ModelTarget) -> None:
        """Load ``target`` on the server at ``base``; :class:`LoadError` saying why not."""

    async def unload(self, model: str) -> None:
        """Ask the server to drop the model, then wait until it no longer lists it."""
        model_id = self._ids.get(model)
        self._forget(model)
        base = self._base()
        if model_id is None or base is None:
            return  # not loaded by us, or the server is gone (and its models with it)
        await self._unload_on(base, model_id)
        await self._until_gone(base, model_id, UNLOAD_WAIT_S)

    @abc.abstractmethod
    async def _unload_on(self, base: str, model_id: str) -> None:
        """Ask the server at ``base`` to drop ``model_id`` (the wait is the base's)."""

    def _load_failed(self, model_id: str, message: str) -> LoadError:
        """The server's own words on a failed load; out of memory when they say so."""
        return LoadError(
            f"{self.provider} failed to load {model_id!r}: {message}",
            out_of_memory=says_out_of_memory([message]),
            log_tail=[message],
        )

    async def _confirm_loaded(self, base: str, model_id: str) -> None:
        """A load the server answered must show in what it lists as loaded."""
        if model_id not in await self.loaded_ids(base):
            raise self._not_listed(model_id)

    def _not_listed(self, model_id: str) -> LoadError:
        return LoadError(
            f"{self.provider} answered the load of {model_id!r} but {self.loaded_list} "
            "does not list it"
        )

    def _forget(self, model: str) -> None:
        """Drop what the adapter keeps of a model that left the server."""
        self._ids.pop(model, None)

    def _lose(self, model: str, why: str) -> None:
        self._forget(model)
        log.warning("%s: model %s lost: %s", self.provider, model, why)
        self._lost(model, why)

    def server_changed(self, process: ManagedProcess) -> None:
        """The server left ``ready``: every model it held is gone."""
        if process.state in _SERVING or not self._ids:
            return
        why = process.message or f"{self.provider} is {process.state}"
        for model in list(self._ids):
            self._lose(model, why)

    @abc.abstractmethod
    async def loaded_ids(self, base: str) -> set[str]:
        """The ids the server says it holds now (raises :class:`LoadError` if it cannot)."""

    async def _watch_loaded(self) -> None:
        """Every health interval: a model the server no longer holds has been lost."""
        while self._ids:
            await asyncio.sleep(self.config.health.interval_s)
            base = self._base()
            if base is None:
                continue  # the server's own state change reports the loss
            # Judge only what was loaded before asking: a load that ends while the
            # answer is on its way is not in it.
            settled = {m: i for m, i in self._ids.items() if m not in self._loading}
            try:
                shown = await self.loaded_ids(base)
            except LoadError:
                continue
            for model, model_id in settled.items():
                if model_id not in shown and self._ids.get(model) == model_id:
                    self._lose(model, f"{self.provider} no longer lists it in {self.loaded_list}")

    async def close(self) -> None:
        """Unload every model we loaded; close the HTTP session."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for model in list(self._ids):
            try:
                await self.unload(model)
            except LoadError as exc:  # one stuck model must not keep the others loaded
                log.warning("%s: %s", self.provider, exc)
        await self.http.close()

    async def _until_gone(self, base: str, model_id: str, wait_s: float) -> None:
        """Poll until the server no longer lists ``model_id``; :class:`LoadError` if it
        still does after ``wait_s`` (the books must not say unloaded while it is there)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while loop.time() < deadline:
            try:
                if model_id not in await self.loaded_ids(base):
                    return
            except LoadError:
                return  # the server went away: nothing is loaded in it any more
            await asyncio.sleep(0.1)  # a poll interval; the loop re-checks the server
        raise LoadError(
            f"{self.provider} still lists {model_id!r} in {self.loaded_list} {wait_s:g} s "
            "after it was asked to unload it"
        )
