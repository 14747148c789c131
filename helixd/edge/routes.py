"""Which handler answers a method and path: exact paths in one dictionary, then the few
with a variable last part (``/v1/models/{name:.+}``, ``/ui/static/{file}``).

A GET route answers HEAD too. A path known under another method is a 405, else a 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from helixd.edge.message import Answer, Request

Handler = Callable[["Request"], Awaitable["Answer"]]


@dataclass(frozen=True, slots=True)
class _Tail:
    """A path ending in a variable part: ``{name}`` (one segment), ``{name:.+}`` (any, not
    empty) or ``{name:.*}`` (any)."""

    prefix: str
    name: str
    slashes: bool
    empty: bool

    def match(self, path: str) -> str | None:
        if not path.startswith(self.prefix):
            return None
        rest = path[len(self.prefix) :]
        if (not rest and not self.empty) or ("/" in rest and not self.slashes):
            return None
        return rest


@dataclass(frozen=True, slots=True)
class Match:
    handler: Handler
    info: dict[str, str]


class Routes:
    """Routes, added before serving, looked up per request."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Handler] = {}
        self._tails: list[tuple[str, _Tail, Handler]] = []

    def add_get(self, path: str, handler: Handler) -> None:
        self.add_route("GET", path, handler)
        self.add_route("HEAD", path, handler)

    def add_post(self, path: str, handler: Handler) -> None:
        self.add_route("POST", path, handler)

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        if "{" not in path:
            self._exact[(method, path)] = handler
            return
        prefix, _, variable = path.partition("{")
        if not variable.endswith("}") or "/" in variable:
            raise ValueError(f"unsupported route pattern: {path}")
        name, _, pattern = variable[:-1].partition(":")
        if pattern not in ("", ".+", ".*"):
            raise ValueError(f"unsupported route pattern: {path}")
        tail = _Tail(prefix, name, slashes=bool(pattern), empty=pattern == ".*")
        self._tails.append((method, tail, handler))

    def find(self, method: str, path: str) -> Match | None:
        """The handler for ``method`` on ``path``, or None."""
        handler = self._exact.get((method, path))
        if handler is not None:
            return Match(handler, {})
        for wanted, tail, handler in self._tails:
            if wanted == method and (value := tail.match(path)) is not None:
                return Match(handler, {tail.name: value})
        return None

    def allows_other_methods(self, path: str) -> bool:
        """Whether some route serves ``path`` under another method (a 405, not a 404)."""
        return any(p == path for _, p in self._exact) or any(
            tail.match(path) is not None for _, tail, _ in self._tails
        )
