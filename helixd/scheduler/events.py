"""What residency tells whoever watches it: states, loads, evictions, queues, sizes.

Residency is the one owner of what is resident; others learn of its changes by
subscribing to its :class:`EventHub` (any number of subscribers, each told of every
event in the order they happen) instead of by setting callback attributes on it. The
daemon refreshes systemd's STATUS= line and persists measured sizes, the proxy counts
loads and evictions for Prometheus, the jobs raise alerts on failed loads, and a live
view can follow all of it.

Handlers run synchronously, inside the change (see :class:`helixd.hub.Hub`).
"""

from __future__ import annotations

from dataclasses import dataclass

from helixd.hub import Hub
from helixd.scheduler.core import ModelState


@dataclass(frozen=True, slots=True)
class Changed:
    """Something ``status`` shows may have changed: a state, a pin, the config."""


@dataclass(frozen=True, slots=True)
class StateChanged:
    """A model went from ``old`` to ``new``; ``message`` says why (may be empty)."""

    model: str
    old: ModelState
    new: ModelState
    message: str


@dataclass(frozen=True, slots=True)
class CountsChanged:
    """A request started waiting, started being served, or ended."""

    model: str
    in_flight: int
    queued: int


@dataclass(frozen=True, slots=True)
class LoadEnded:
    """A load ended after ``seconds``; ``error`` is None when the model is loaded."""

    model: str
    seconds: float
    error: str | None = None
    out_of_memory: bool = False

    @property
    def ok(self) -> bool:
        """The model is loaded."""
        return self.error is None


@dataclass(frozen=True, slots=True)
class Evicted:
    """A model was unloaded (or put to sleep) to make room for another."""

    model: str


@dataclass(frozen=True, slots=True)
class Measured:
    """A loaded model's processes were measured: the figure for its next load."""

    model: str
    size_key: str
    vram_bytes: int
    ram_bytes: int


Event = Changed | StateChanged | CountsChanged | LoadEnded | Evicted | Measured


class EventHub(Hub[Event]):
    """Residency's subscribers, told of each event in turn."""

    def __init__(self) -> None:
        super().__init__("helixd.scheduler")
