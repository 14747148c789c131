"""The proxy's HTTP server: OpenAI routes in front of the residency scheduler.

Request flow (DESIGN.md): bounded body → resolve the name → ``residency.lease`` (waits in
the model's bounded queue, may load, may evict) → relay to the model's own server,
streaming → release. The HTTP is :mod:`helixd.edge`'s: a client that goes away cancels
its handler, which takes it out of the queue or frees its slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from helixd.config import ProviderConfig, ProxyConfig, RouteConfig
from helixd.config.proxy import split_listen
from helixd.config.routes import FailureClass
from helixd.edge.client import Pool
from helixd.edge.door import Tally
from helixd.edge.message import (
    Answer,
    BodyTimeout,
    BodyTooLarge,
    Request,
    Response,
    StreamResponse,
    json_response,
)
from helixd.edge.routes import Routes
from helixd.edge.server import EdgeServer, Limits
from helixd.hub import Hub
from helixd.proxy import failover
from helixd.proxy.access import AccessLog
from helixd.proxy.attempt import FAILURE_OF, Exchange, Failed, Outcome, Refused, RequestRecord
from helixd.proxy.body import inflate, too_large
from helixd.proxy.classify import classify
from helixd.proxy.errors import OPENAI_STATUS, openai_error, sse_error
from helixd.proxy.health import ModelHealth
from helixd.proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from helixd.proxy.metrics import Metrics
from helixd.proxy.ollama import OLLAMA_STATUS, ollama_error, relay_ollama
from helixd.proxy.ollama_front import OllamaFront
from helixd.proxy.readiness import GatewayHealth
from helixd.proxy.relay import EarlyStream, UpstreamRejected, UpstreamUnreachable, relay
from helixd.proxy.routing import Attempts, Router
from helixd.proxy.spend import Spending, UsageSniffer
from helixd.scheduler import ModelStatus, Residency, ResidencyError

log = logging.getLogger("helixd.proxy")

MiB = 1024**2


class ProxyServer:
    """The TCP endpoint apps call, by model name or alias."""

    def __init__(
        self, config: ProxyConfig, residency: Residency, state_dir: Path | None = None
    ) -> None:
        self.config = config
        self.residency = residency
        self.host, self.port = split_listen(config.listen)
        self.edge: EdgeServer | None = None
        self._pool: Pool | None = None
        self.router = Router(residency)
        self.health = ModelHealth()
        self.readiness = GatewayHealth(self)
        self.metrics = Metrics(residency)
        self.access = AccessLog()
        # One WARNING a minute per kind of refusal: a flood of bad requests is noticed
        # without flooding the log (each one has its access line).
        self._refusal_notes: dict[str, Tally] = {}
        self.spend = Spending(state_dir / "spend.json" if state_dir is not None else None)
        # Each finished request, for whoever watches (the live view); nothing when nobody does.
        self.finished: Hub[RequestRecord] = Hub("helixd.proxy")
        self._mounts: list[Callable[[Routes], None]] = []
        self._public: list[Callable[[str], bool]] = []

    # -- life cycle --------------------------------------------------------------------

    def routes(self) -> Routes:
        """Every route of the endpoint."""
        routes = Routes()
        routes.add_get("/metrics", self.scrape)
        routes.add_get("/v1/models", self.list_models)
        routes.add_get("/v1/models/{name:.+}", self.get_model)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            routes.add_post(path, self.forward)
        OllamaFront(self).add_routes(routes)
        self.readiness.add_routes(routes)
        for mount in self._mounts:
            mount(routes)
        return routes

    def mount(
        self,
        add_routes: Callable[[Routes], None],
        public: Callable[[str], bool] | None = None,
    ) -> None:
        """Serve more routes on the endpoint (before :meth:`start`): ``add_routes`` adds
        them. A GET of a path ``public`` accepts is served without an API key
        (a page's own files, which hold no secret and must load to ask for one)."""
        self._mounts.append(add_routes)
        if public is not None:
            self._public.append(public)

    async def start(self) -> None:
        """Bind and serve; an address in use raises OSError for the daemon to report."""
        # No HTTP(S)_PROXY is read: loopback traffic to a model's server goes direct.
        self._pool = Pool(connect_timeout_s=10, read_timeout_s=self.config.upstream_timeout_s)
        config = self.config
        self.access.configure(config.access_log, config.access_log_sample)
        self._routes = self.routes()
        self.edge = EdgeServer(
            self.dispatch,
            Limits(
                header_timeout_s=config.header_timeout_s,
                idle_timeout_s=config.idle_timeout_s,
                max_header_bytes=config.max_header_kib * 1024,
                max_headers=config.max_headers,
                max_body_bytes=config.max_body_mib * MiB,
                body_timeout_s=config.read_timeout_s,
                max_connections=config.max_connections,
            ),
            openai_error,
            lambda status, code: self.refused_log(None, None, status, code, time.perf_counter()),
        )
        await self.edge.start(self.host, self.port)
        self.port = self.edge.port

    async def stop(self) -> None:
        """Stop accepting, finish or drop what is in flight, close upstream connections."""
        if self.edge is not None:
            await self.edge.stop()
        if self._pool is not None:
            await self._pool.close()

    def configure(
        self,
        aliases: dict[str, str],
        routes: dict[str, RouteConfig],
        providers: Mapping[str, ProviderConfig] | None = None,
    ) -> None:
        """Aliases (alias → model), routes and priced providers (replaced on reload)."""
        self.router.configure(aliases, routes)
        self.spend.configure(providers or {})

    def info(self) -> dict[str, Any]:
        """For ``status``: where it listens, and the models cooling down after failures."""
        return {
            "listen": f"{self.host}:{self.port}",
            "url": f"http://{self.host}:{self.port}",
            "cooling_down": self.health.cooling_report(),
            "spend": self.spend.report(),
            "routes": {r: self.router.describe_route(r) for r in self.router.routes},
        }

    # -- dispatch ----------------------------------------------------------------------

    async def dispatch(self, request: Request) -> Answer:
        """Every request: its key, its route, and the endpoint's own refusals."""
        started = time.perf_counter()
        keys = self.config.api_keys
        if keys and not (
            request.method in ("GET", "HEAD") and any(p(request.path) for p in self._public)
        ):
            given = request.headers.get("Authorization", "")
            # The scheme is case-insensitive (RFC 9110 §11.1): "bearer KEY" is as good.
            bearer = given[:7].lower() == "bearer "
            token = given[7:].strip() if bearer else request.headers.get("x-api-key")
            if token is None or not any(_same_secret(token, key) for key in keys):
                why = "missing or wrong API key (Authorization: Bearer KEY)"
                return self._refuse(request, 401, why, "invalid_api_key", started)
        found = self._routes.find(request.method, request.path)
        if found is None:
            if self._routes.allows_other_methods(request.path):
                why = f"{request.method} is not allowed on {request.path}"
                return self._refuse(request, 405, why, "method_not_allowed", started)
            why = f"no such endpoint: {request.method} {request.path}"
            return self._refuse(request, 404, why, "unknown_endpoint", started)
        request.match_info = found.info
        try:
            return await found.handler(request)
        except BodyTooLarge:
            why = too_large(self.config.max_body_mib)
            return self._refuse(request, 413, why, "body_too_large", started)
        except BodyTimeout as exc:  # a handler that read the body and did not say
            return self._refuse(request, 408, str(exc), "request_timeout", started)

    def _refuse(
        self, request: Request, status: int, message: str, code: str, started: float
    ) -> Response:
        """An error of the endpoint's own, before any handler: logged and counted too."""
        self.refused_log(request, None, status, code, started)
        return openai_error(status, message, code)

    # -- names -------------------------------------------------------------------------

    def resolve(self, name: str) -> str | None:
        """A model's name from a model name or an alias."""
        return self.router.model_of(name)

    # -- handlers ----------------------------------------------------------------------

    async def scrape(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus text format."""
        return Response(
            body=self.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    async def list_models(self, request: Request) -> Response:
        """``GET /v1/models``: models, aliases and routes, with helixd's fields."""
        data = [self._model_card(model.name, model=model) for model in self.residency.views()]
        data += [self._model_card(model, alias) for alias, model in self.router.aliases.items()]
        data += [self._route_card(route) for route in self.router.routes]
        return json_response({"object": "list", "data": [d for d in data if d]})

    async def get_model(self, request: Request) -> Response:
        """``GET /v1/models/{id}``."""
        name = request.match_info["name"]
        model = self.resolve(name)
        if model is not None:
            card = self._model_card(model, name if name != model else None)
        else:
            card = self._route_card(name)
        if card is None:
            try:
                self.resolve_plan(name, {})
            except Refused as refused:
                return openai_error(OPENAI_STATUS[refused.code], refused.message, refused.code)
        return json_response(card)

    def _model_card(
        self, name: str, alias: str | None = None, model: ModelStatus | None = None
    ) -> dict[str, Any] | None:
        found = model or self.residency.find(name)
        if found is None:
            return None
        helix: dict[str, Any] = {"state": str(found.state), "provider": found.provider}
        if alias is not None:
            helix["alias_of"] = name
        else:  # a gateway's fields; an alias's are on its model's card
            if aliases := self.router.aliases_of(name):
                helix["aliases"] = aliases
            helix["readiness"] = self.readiness.of(found)
            helix["max_concurrency"] = found.config.max_concurrency
        return {
            "id": alias or name,
            "object": "model",
            "created": 0,
            "owned_by": "helixd",
            "helix": helix,
        }

    def _route_card(self, route: str) -> dict[str, Any] | None:
        helix = self.router.describe_route(route)
        if helix is None:
            return None
        return {"id": route, "object": "model", "created": 0, "owned_by": "helixd", "helix": helix}

    async def forward(self, request: Request) -> Answer:
        """The OpenAI POST routes: resolve, then try models in order until one answers."""
        started = time.perf_counter()
        body: dict[str, Any] = {}
        try:
            raw, body = await self.read_body(request)
            plan = await self.plan(body)
        except Refused as refused:
            status = OPENAI_STATUS[refused.code]
            self.refused_log(request, body.get("model"), status, refused.code, started)
            return openai_error(status, refused.message, refused.code)
        exchange = Exchange(request, body, raw, plan, started)
        try:
            return await self.attempt_in_order(exchange)
        except asyncio.CancelledError:
            exchange.outcome.client_gone()
            raise
        finally:
            self.access_log(exchange)

    async def read_body(self, request: Request) -> tuple[bytes, dict[str, Any]]:
        """The request's JSON object, which names a ``model``; :class:`Refused` if not."""
        try:
            raw = await request.read()  # within read_timeout_s: the edge's body deadline
        except BodyTimeout:
            limit = self.config.read_timeout_s
            raise Refused(
                f"request body not received within {limit:g} s", "request_timeout"
            ) from None
        except BodyTooLarge:
            raise Refused(too_large(self.config.max_body_mib), "body_too_large") from None
        raw = inflate(raw, request.headers.get("Content-Encoding", ""), self.config.max_body_mib)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise Refused(f"request body is not valid JSON: {exc}", "invalid_json") from None
        except RecursionError:
            raise Refused(
                "request body is not valid JSON: nested too deep", "invalid_json"
            ) from None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise Refused("the request needs a 'model' (a string)", "missing_model")
        return raw, body

    def resolve_plan(self, asked: str, body: Mapping[str, Any]) -> Attempts:
        """The models to try for ``asked``, by name, alias or route rules only."""
        plan = self.router.attempts(asked, body, self.cooling)
        if plan is None:
            listing = ", ".join(self.router.known()) or "none configured"
            raise Refused(f"model {asked!r} not found; models: {listing}", "model_not_found")
        return plan

    async def plan(self, body: dict[str, Any]) -> Attempts:
        """The models to try, in order: resolved, classified, within budget."""
        plan = await self.classified(self.resolve_plan(body["model"], body), body)
        plan, blocked = self.within_budget(plan)
        if blocked is not None:
            raise Refused(blocked, "budget_exceeded")
        return plan

    async def attempt_in_order(self, x: Exchange) -> Answer:
        """Make the tries the failover policy (:mod:`helixd.proxy.failover`) picks, in
        order, until one answers, a failure is not one to escalate, or none is left."""
        plan, outcome = x.plan, x.outcome
        tries = failover.schedule(plan)
        failure: Response | None = None
        attempt = 0
        index = failover.next_try(tries, 0, self.cooling)
        while index is not None:
            model, last = tries[index], index == len(tries) - 1
            attempt += 1
            outcome.model, outcome.attempts = model, attempt
            try:
                response = await self._serve(x, model, last)
            except Failed as failed:
                self.metrics.errors.labels(model, failed.kind).inc()
                keys = self._health_keys(model)
                if failover.counts_against(failed.kind) and self.health.failed(keys, self.config):
                    self.metrics.cooldowns.labels(model).inc()
                failure = failed.response
                outcome.status = failure.status
                if not failover.escalates(plan, failed.kind):
                    return failure
                log.warning(
                    "%s: %s failed (%s: %s)%s",
                    plan.route or model,
                    model,
                    failed.kind,
                    failed.response.text,
                    "" if last else "; trying the next",
                )
                index = failover.next_try(tries, index + 1, self.cooling)
                continue
            self.health.served(self._health_keys(model))
            return response
        assert failure is not None  # the last try is always made
        return failure

    async def _serve(self, x: Exchange, model: str, last: bool) -> Answer:
        """One attempt on one model: acquire it, relay, release. Raise :class:`Failed`."""
        plan = x.plan
        headers = {"x-helix-model": model}
        if plan.route is not None:
            headers["x-helix-route"] = plan.route
        if plan.label is not None:
            headers["x-helix-label"] = plan.label
        early = None
        if (
            x.translation is None
            and x.body.get("stream") is True
            and self.residency.would_queue(model)
        ):
            early = EarlyStream(x.request, self.config.sse_keepalive_s, headers)
        try:
            return await self._serve_acquired(x, model, last, headers, early)
        finally:
            if early is not None:
                await early.stop()

    async def classified(self, plan: Attempts, body: dict[str, Any]) -> Attempts:
        """A route with a classifier (and no rule hit) puts the labelled model first."""
        route = self.router.routes.get(plan.route or "")
        if route is None or route.classifier is None or plan.rule_hit is not None:
            return plan
        classifier_model = self.router.model_of(route.classifier.model)
        if classifier_model is None:
            return plan
        label, target = await classify(
            self._pool_or_fail(), self.residency, classifier_model, route.classifier, body
        )
        chosen = self.router.model_of(target)
        if chosen is None:
            return plan
        order = (chosen, *(m for m in plan.order if m != chosen))
        return dataclasses.replace(plan, order=order, label=label or "default")

    def _health_keys(self, model: str) -> list[str]:
        # A multi-model server (a remote, Ollama) failing is every one of its models
        # failing; per-model servers fail alone.
        adapter = self.residency.adapter_of(model)
        if adapter is None:  # removed by a reload while a request for it was under way
            return [model]
        if adapter.shape == "multi-model":
            return [model, f"provider:{adapter.provider}"]
        return [model]

    def cooling(self, model: str) -> bool:
        """True while the model, or the one server behind it, is cooling down."""
        return any(self.health.cooling(key) for key in self._health_keys(model))

    def within_budget(self, plan: Attempts) -> tuple[Attempts, str | None]:
        """Drop candidates whose remote is past its daily budget; say why if none is left."""
        reasons = {}
        if not self.spend.providers:
            return plan, None  # no priced provider: nothing to check
        for model in plan.order:
            adapter = self.residency.adapter_of(model)
            reason = None if adapter is None else self.spend.blocked(adapter.provider)
            if reason is not None:
                reasons[model] = reason
        if not reasons:
            return plan, None
        order = tuple(m for m in plan.order if m not in reasons)
        if not order:
            return plan, "; ".join(dict.fromkeys(reasons.values()))
        return dataclasses.replace(plan, order=order), None

    async def _serve_acquired(
        self,
        x: Exchange,
        model: str,
        last: bool,
        headers: dict[str, str],
        early: EarlyStream | None,
    ) -> Answer:
        request, body, raw, started = x.request, x.body, x.raw, x.started
        outcome, translation = x.outcome, x.translation
        error = openai_error if translation is None else _as_ollama_error
        try:
            async with self.residency.lease(model) as entry:
                prepared = await early.stop() if early is not None else None
                upstream_id = entry.adapter.upstream_model(model)
                provider = entry.adapter.provider
                priced = provider in self.spend.providers
                payload = raw
                if priced and body.get("stream") is True:
                    # Ask a streaming remote to report usage, so its cost can be counted.
                    payload = json.dumps(
                        {**body, "model": upstream_id, "stream_options": {"include_usage": True}}
                    ).encode()
                elif upstream_id != body["model"]:
                    payload = json.dumps({**body, "model": upstream_id}).encode()
                auth = entry.adapter.upstream_headers(model)
                base = entry.adapter.upstream(model)
                if base is None:
                    why = f"{model}: its server is gone"
                    raise Failed("error", error(502, why, "upstream_unreachable"))
                native = translation is not None and entry.adapter.native_dialect == "ollama"
                if native:
                    # Ollama to Ollama: untouched but for its name there, and a keep-alive
                    # that leaves the model's lifetime to helixd.
                    payload = json.dumps({**body, "model": upstream_id, "keep_alive": -1}).encode()
                try:
                    if translation is None or native:
                        response, result = await relay(
                            self._pool_or_fail(),
                            request,
                            base + request.path,
                            payload,
                            headers,
                            started,
                            time.perf_counter,
                            may_retry=not last and prepared is None,
                            prepared=prepared,
                            upstream_headers=auth,
                            sniffer=None if native else UsageSniffer(),
                        )
                    else:
                        to_send = dataclasses.replace(
                            translation, body={**translation.body, "model": upstream_id}
                        )
                        response, result = await relay_ollama(
                            self._pool_or_fail(),
                            request,
                            base + translation.openai_path,
                            to_send,
                            body["model"],
                            headers,
                            started,
                            time.perf_counter,
                            may_retry=not last,
                            upstream_headers=auth,
                        )
                except UpstreamUnreachable as exc:
                    why = f"{model}: its server did not answer: {exc}"
                    if prepared is not None:
                        return await _end_with_error(prepared, why, "upstream_unreachable", outcome)
                    raise Failed("error", error(502, why, "upstream_unreachable")) from None
                except UpstreamRejected as exc:
                    kind: FailureClass = (
                        "overloaded"
                        if exc.status in (429, 503)
                        else "timeout"
                        if exc.status == 504
                        else "error"
                    )
                    rejected = Response(
                        status=exc.status,
                        body=exc.body,
                        content_type="application/json",
                        headers=headers,
                    )
                    if translation is not None:
                        rejected = _as_ollama_error(exc.status, str(exc), "upstream_failed")
                    raise Failed(kind, rejected) from None
                outcome.status, outcome.first_byte_s = result.status, result.first_byte_s
                if result.failed_mid_stream:
                    # Answered 200, but cut: an outcome of its own, and an error to count.
                    outcome.error = "upstream_cut"
                    self.metrics.errors.labels(model, "upstream_cut").inc()
                if result.usage is not None:
                    self.metrics.count_tokens(model, result.usage)
                    if priced:
                        self.spend.record(provider, result.usage)
                return response
        except ResidencyError as exc:
            status = (OPENAI_STATUS if translation is None else OLLAMA_STATUS)[exc.code]
            prepared = await early.stop() if early is not None else None
            if prepared is not None:  # the event stream has started: end it with the error
                return await _end_with_error(prepared, str(exc), exc.code, outcome)
            extra = {"Retry-After": "1"} if status == 429 else {}
            response = error(status, str(exc), exc.code, {**headers, **extra})
            residency_kind = FAILURE_OF.get(exc.code)
            if residency_kind is None:  # unknown model, shutting down: no candidate helps
                raise Failed("final", response) from None
            raise Failed(residency_kind, response) from None

    def refused_log(
        self, request: Request | None, asked: Any, status: int, code: str, started: float
    ) -> None:
        """One access-log line (and a record for watchers) for a request refused before
        any model was tried: an unknown name, a body that is not JSON, a budget spent;
        ``request`` None: one too malformed to have a method and path."""
        asked = asked if isinstance(asked, str) else "-"
        method, path = ("-", "-") if request is None else (request.method, request.path)
        elapsed = time.perf_counter() - started
        self.metrics.request_refused(status)
        notes = self._refusal_notes.get(code)
        if notes is None:
            notes = self._refusal_notes[code] = Tally(
                time.monotonic,
                f"endpoint: refused %d requests with {status} ({code}) since the last note; "
                "the access log has each",
            )
        notes.count()
        self._tell_watchers(method, path, asked, None, None, status, elapsed, None, 0)
        self.access.write(
            f"{method} {path} asked={asked} refused={code} status={status} ms={elapsed * 1000:.1f}",
            succeeded=False,
        )

    def _tell_watchers(
        self,
        method: str,
        path: str,
        asked: str,
        route: str | None,
        model: str | None,
        status: int,
        elapsed: float,
        first_byte_s: float | None,
        attempts: int,
    ) -> None:
        if not self.finished.subscribed:
            return  # nobody watches: build nothing
        self.finished.emit(
            RequestRecord(
                time=time.time(),
                method=method,
                path=path,
                asked=asked,
                route=route,
                model=model,
                status=status,
                ms=elapsed * 1000,
                ttft_ms=None if first_byte_s is None else first_byte_s * 1000,
                attempts=attempts,
            )
        )

    def access_log(self, x: Exchange) -> None:
        """Metrics and one access-log line for a finished request."""
        request, asked, plan, o = x.request, x.body["model"], x.plan, x.outcome
        elapsed = time.perf_counter() - x.started
        model = o.model or "-"
        route = plan.route or "-"
        self.metrics.request_done(model, route, o.status, elapsed, o.first_byte_s)
        ttft = f"{o.first_byte_s * 1000:.1f}" if o.first_byte_s is not None else "-"
        self._tell_watchers(
            request.method,
            request.path,
            asked,
            plan.route,
            o.model,
            o.status,
            elapsed,
            o.first_byte_s,
            o.attempts,
        )
        self.access.write(
            f"{request.method} {request.path} asked={asked} route={route} model={model} "
            f"attempts={o.attempts} status={o.status} ms={elapsed * 1000:.1f} ttft_ms={ttft}"
            f"{f' error={o.error}' if o.error else ''}",
            succeeded=o.status < 400 and not o.error,
        )

    def _pool_or_fail(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("proxy not started")
        return self._pool


def _as_ollama_error(
    status: int, message: str, code: str = "", headers: dict[str, str] | None = None
) -> Response:
    """The Ollama dialect's error, with the same signature as :func:`openai_error`."""
    return ollama_error(status, message, headers)


async def _end_with_error(
    response: StreamResponse, message: str, code: str, outcome: Outcome
) -> Answer:
    """End an event stream that already started (with keep-alives) with an error event."""
    outcome.status = 200
    await response.write(sse_error(message, code))
    await response.write_eof()
    return response


def _same_secret(given: str, key: str) -> bool:
    """Compare in constant time, so response timing does not leak a key's prefix."""
    return hmac.compare_digest(given.encode(), key.encode())
