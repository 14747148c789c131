"""Which models may serve a request, in which order: a name, an alias, or a route.

A route's candidates are ordered by its strategy; task rules put a matching model first;
models cooling down after repeated failures go last (they are still tried when nothing
else is left). Pure decisions over the residency snapshot the caller passes in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from helixd.config import RouteConfig
from helixd.config.routes import FAILURE_CLASSES, FailureClass
from helixd.providers.base import ModelAdapter
from helixd.scheduler import ModelStatus

# A plain model name: retried once when its server gave no byte (it may be restarting).
PLAIN_RETRIES = 1


@dataclass(frozen=True)
class Attempts:
    """The order to try models in, and the route's limits."""

    route: str | None
    order: tuple[str, ...]
    retries: int = PLAIN_RETRIES
    escalate_on: frozenset[FailureClass] = frozenset(FAILURE_CLASSES)
    max_attempts: int = PLAIN_RETRIES + 1
    rule_hit: str | None = None
    label: str | None = None  # the classifier's label ("default" when it gave none)


class Models(Protocol):
    """What the router reads of residency (:class:`helixd.scheduler.Residency`)."""

    def find(self, name: str) -> ModelStatus | None: ...

    def adapter_of(self, name: str) -> ModelAdapter | None: ...

    def names(self) -> list[str]: ...


@dataclass
class Router:
    """Resolves names against the config: models, aliases, routes."""

    models: Models
    aliases: dict[str, str] = field(default_factory=dict)
    routes: dict[str, RouteConfig] = field(default_factory=dict)
    _rules: dict[str, list[tuple[re.Pattern[str], str]]] = field(default_factory=dict)

    def configure(self, aliases: dict[str, str], routes: dict[str, RouteConfig]) -> None:
        """Adopt the config's aliases and routes (at start and on reload)."""
        self.aliases = dict(aliases)
        self.routes = dict(routes)
        self._rules = {
            name: [(re.compile(rule.match), rule.model) for rule in route.rules]
            for name, route in routes.items()
        }

    def model_of(self, name: str) -> str | None:
        """A model's name from a model name or an alias."""
        if self.models.adapter_of(name) is not None:
            return name
        return self.aliases.get(name)

    def aliases_of(self, model: str) -> list[str]:
        """The aliases of ``model``, sorted."""
        return sorted(alias for alias, target in self.aliases.items() if target == model)

    def candidates(self, route: str) -> list[str]:
        """A route's candidates as model names, in config order (aliases resolved)."""
        config = self.routes.get(route)
        if config is None:
            return []
        found = (self.model_of(candidate) for candidate in config.candidates)
        return list(dict.fromkeys(m for m in found if m is not None))

    def describe_route(self, route: str) -> dict[str, Any] | None:
        """What listings say of a route (``helix`` of its card); None if it is none."""
        config = self.routes.get(route)
        if config is None:
            return None
        return {"kind": "route", "candidates": self.candidates(route), "strategy": config.strategy}

    def known(self) -> list[str]:
        """Every name a client may use."""
        return self.models.names() + sorted(self.aliases) + sorted(self.routes)

    def attempts(
        self, name: str, body: Mapping[str, Any], cooling: Callable[[str], bool]
    ) -> Attempts | None:
        """How to serve a request that asked for ``name``; None when nothing has that name."""
        model = self.model_of(name)
        if model is not None:
            # Asked by name: only a server that gave no answer is worth a second try.
            return Attempts(None, (model,), escalate_on=frozenset({"error"}))
        route = self.routes.get(name)
        if route is None:
            return None
        order = self._by_strategy(route, self.candidates(name))
        hit = None
        text = last_user_text(body)
        for pattern, target in self._rules.get(name, []):
            wanted = self.model_of(target)
            if wanted is not None and pattern.search(text):
                hit = wanted
                order = [wanted, *(m for m in order if m != wanted)]
                break
        # Cooling models go last, in their order: tried only if nothing else serves.
        order = [m for m in order if not cooling(m)] + [m for m in order if cooling(m)]
        return Attempts(
            name,
            tuple(dict.fromkeys(order)),
            route.retries,
            frozenset(route.escalate_on),
            route.max_attempts,
            hit,
        )

    def _by_strategy(self, route: RouteConfig, order: list[str]) -> list[str]:
        if route.strategy == "fallback":
            return order
        found = {m: self.models.find(m) for m in order}
        now = {m: v for m, v in found.items() if v is not None}
        order = list(now)  # (a reload may have removed one since the order was made)
        if route.strategy == "prefer-loaded":
            return [m for m in order if now[m].loaded] + [m for m in order if not now[m].loaded]

        def load_of(m: str) -> tuple[float, bool]:
            v = now[m]
            return ((v.in_flight + v.queued) / v.config.max_concurrency, not v.loaded)

        return sorted(order, key=load_of)  # stable: config order breaks ties


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text task rules look at: the last user message, or the prompt."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text(message.get("content"))
        return ""
    return _text(body.get("prompt"))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(
            part.get("text", "") for part in content if isinstance(part, dict)
        ) or " ".join(p for p in content if isinstance(p, str))
    return ""
