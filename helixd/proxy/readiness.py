"""What a gateway in front of several helixd hosts asks: readiness that never loads a model.

A gateway (LiteLLM's proxy, a load balancer) checks its upstreams often; a check that
runs a completion would load, on every host it checks, each model it checks. These
routes answer from residency's books alone:

- ``GET /health``: 200 while some model can be served (loaded, or loadable on demand),
  503 when none can; with counts per readiness.
- ``GET /health/models`` and ``GET /health/models/{name}``: each name's readiness —
  ``loaded`` (resident now), ``loadable`` (a request would load it), ``failed`` (its load
  failed and requests fail fast, or its requests keep failing and it cools down); one
  name answers 503 when it is ``failed``.
- ``POST /health/ready/v1/{chat/completions,completions,embeddings}`` and the same under
  ``/health/loaded/v1``: the OpenAI routes as a probe, for gateways whose health check
  sends a real request to ``api_base`` (LiteLLM's ``model_info.health_check_params``
  can point it here): an OpenAI-shaped 200 when the named model is ready (``ready``:
  loaded or loadable; ``loaded``: resident now), an OpenAI-shaped 503 when it is not.
  The request body names the model and is otherwise ignored; nothing is forwarded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

from helixd import __version__
from helixd.edge.message import Request, Response, json_response
from helixd.edge.routes import Routes
from helixd.proxy.errors import openai_error
from helixd.proxy.routing import Router
from helixd.scheduler import ModelState, ModelStatus, Residency

Readiness = Literal["loaded", "loadable", "failed"]
READINESS: tuple[Readiness, ...] = ("loaded", "loadable", "failed")
# The probe routes: what each accepts as ready.
WANTS: dict[str, frozenset[Readiness]] = {
    "ready": frozenset({"loaded", "loadable"}),
    "loaded": frozenset({"loaded"}),
}
PROBE_PATHS = ("chat/completions", "completions", "embeddings")


def model_readiness(state: ModelState, failed_until: float, now: float, cooling: bool) -> Readiness:
    """One model's readiness from its books: pure, so the rules are tested alone.

    A failed load counts as ``failed`` while requests fail fast (until ``failed_until``);
    after that the next request tries again, so it is ``loadable``. A model cooling down
    after repeated request failures is ``failed`` too: a gateway should prefer another
    host for it, and helixd itself tries it last.
    """
    if cooling or (state == ModelState.FAILED and now < failed_until):
        return "failed"
    if state == ModelState.LOADED:
        return "loaded"
    return "loadable"


def best(readiness: Iterable[Readiness]) -> Readiness:
    """A route's readiness: that of its readiest candidate (``failed`` when it has none)."""
    found = set(readiness)
    return next((r for r in READINESS if r in found), "failed")


def probe_answer(path: str, name: str, readiness: Readiness) -> dict[str, Any]:
    """The OpenAI-shaped body of a probe that found ``name`` ready (per route shape)."""
    text = f"helixd: {name} is {readiness}"
    created = int(time.time())
    if path == "embeddings":
        return {
            "object": "list",
            "model": name,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0]}],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if path == "completions":
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop"}
        kind = "text_completion"
    else:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        kind = "chat.completion"
    return {
        "id": f"helixd-health-{created}",
        "object": kind,
        "created": created,
        "model": name,
        "choices": [choice],
        "usage": usage,
    }


class ReadinessSource(Protocol):
    """What readiness reads from the endpoint's server (``ProxyServer``): never more."""

    residency: Residency
    router: Router

    def cooling(self, model: str) -> bool:
        """The model, or the one server behind it, is cooling down after failures."""
        ...

    def resolve(self, name: str) -> str | None:
        """A model's name from a model name or an alias."""
        ...


class GatewayHealth:
    """The ``/health`` routes of the endpoint, read from the server's residency books."""

    def __init__(
        self, server: ReadinessSource, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # The clock must be residency's (monotonic, as the daemon builds it): it is
        # compared with a failed model's ``failed_until``.
        self.server = server
        self.clock = clock

    def add_routes(self, routes: Routes) -> None:
        """Register the health routes."""
        routes.add_get("/health", self.overall)
        routes.add_get("/health/models", self.models)
        routes.add_get("/health/models/{name:.+}", self.one)
        for want in WANTS:
            for path in PROBE_PATHS:
                routes.add_post(f"/health/{want}/v1/{path}", self._probe(want, path))

    # -- what is ready -----------------------------------------------------------------

    def of_model(self, model: str) -> Readiness:
        """The readiness of a configured model (by its own name)."""
        return self.of(self.server.residency.view(model))

    def of(self, model: ModelStatus) -> Readiness:
        """The readiness of a model as residency has it now."""
        cooling = self.server.cooling(model.name)
        return model_readiness(model.state, model.failed_until, self.clock(), cooling)

    def of_name(self, name: str) -> Readiness | None:
        """The readiness of a model, alias or route; None for a name helixd does not know."""
        model = self.server.resolve(name)
        if model is not None:
            return self.of_model(model)
        if name in self.server.router.routes:
            return best(self.of_model(m) for m in self.server.router.candidates(name))
        return None

    def listing(self) -> list[dict[str, Any]]:
        """Every name with its readiness: models (with state), aliases, routes."""
        router = self.server.router
        models = self.server.residency.views()
        rows: list[dict[str, Any]] = [
            {"id": m.name, "readiness": self.of(m), "state": str(m.state)} for m in models
        ]
        names = {m.name for m in models}
        rows += [
            {"id": alias, "readiness": self.of_model(model), "alias_of": model}
            for alias, model in router.aliases.items()
            if model in names
        ]
        rows += [
            {"id": route, "readiness": self.of_name(route), "route": True}
            for route in router.routes
        ]
        return rows

    # -- handlers ----------------------------------------------------------------------

    async def overall(self, request: Request) -> Response:
        """``GET /health``: 200 while some model can be served, else 503."""
        counts = dict.fromkeys(READINESS, 0)
        for model in self.server.residency.views():
            counts[self.of(model)] += 1
        servable = counts["loaded"] + counts["loadable"] > 0
        body = {
            "status": "ok" if servable else "unavailable",
            "version": __version__,
            "models": counts,
        }
        return json_response(body, status=200 if servable else 503)

    async def models(self, request: Request) -> Response:
        """``GET /health/models``: every name's readiness."""
        return json_response({"object": "list", "data": self.listing()})

    async def one(self, request: Request) -> Response:
        """``GET /health/models/{name}``: 200 when loaded or loadable, 503 when failed."""
        name = request.match_info["name"]
        readiness = self.of_name(name)
        if readiness is None:
            return self._unknown(name)
        body = {"id": name, "readiness": readiness}
        return json_response(body, status=503 if readiness == "failed" else 200)

    def _probe(self, want: str, path: str) -> Callable[[Request], Any]:
        accepted = WANTS[want]

        async def probe(request: Request) -> Response:
            """A gateway's health check as an OpenAI request: answered, never forwarded."""
            try:
                body = json.loads(await request.read())
            except ValueError:
                body = None
            name = body.get("model") if isinstance(body, dict) else None
            if not isinstance(name, str):
                return openai_error(400, "the probe needs a 'model' (a string)", "missing_model")
            readiness = self.of_name(name)
            if readiness is None:
                return self._unknown(name)
            if readiness not in accepted:
                wanted = " or ".join(sorted(accepted))
                return openai_error(
                    503,
                    f"{name} is {readiness} on this helixd (the probe wants {wanted})",
                    "model_not_ready",
                )
            return json_response(probe_answer(path, name, readiness))

        return probe

    def _unknown(self, name: str) -> Response:
        listing = ", ".join(self.server.router.known()) or "none configured"
        return openai_error(404, f"model {name!r} not found; models: {listing}", "model_not_found")
