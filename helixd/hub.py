"""A hub of subscribers: the one way a part of helixd tells others of what happened.

The owner of some state emits events; any number of subscribers are told of each, in the
order they happen, instead of setting callback attributes on the owner. Residency's
events (:mod:`helixd.scheduler.events`) and the endpoint's finished requests go through
one, and the live view follows both.

Handlers run synchronously, inside the change, so they must be quick and must not await;
one that raises is logged and the others are still told.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Hub(Generic[T]):
    """Subscribers to events of type ``T``, told of each in turn."""

    def __init__(self, logger: str = "helixd") -> None:
        self._handlers: list[Callable[[T], None]] = []
        self._log = logging.getLogger(logger)

    def subscribe(self, handler: Callable[[T], None]) -> Callable[[], None]:
        """Tell ``handler`` of every event from now on; returns the unsubscribe call."""
        self._handlers.append(handler)

        def unsubscribe() -> None:
            if handler in self._handlers:
                self._handlers.remove(handler)

        return unsubscribe

    @property
    def subscribed(self) -> bool:
        """Someone listens (so an emitter may skip building an event nobody reads)."""
        return bool(self._handlers)

    def emit(self, event: T) -> None:
        """Tell every subscriber; a handler that raises is logged, never propagated."""
        for handler in tuple(self._handlers):
            try:
                handler(event)
            except Exception:
                self._log.exception("an event handler failed on %r", event)
