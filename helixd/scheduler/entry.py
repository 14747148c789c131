"""The books of one model: what residency records about it, and the errors it raises.

:class:`ModelEntry` is the record the executor (:mod:`helixd.scheduler.residency`)
updates and the views (:mod:`helixd.scheduler.views`) read; the catalog builds one per
configured model. It lives apart from both so that the record, the executor's actions
and the views of it each change for their own reason, and so that the catalog and the
views need not import the executor to name it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from helixd.config import ModelConfig
from helixd.errors import ResidencyError as ResidencyError
from helixd.providers.base import ModelAdapter
from helixd.resources.monitor import ResourceSample
from helixd.scheduler.core import ModelState
from helixd.scheduler.sizing import MemoryFigure


class ResourceSource(Protocol):
    """What the executor reads: figures now, and what one process tree holds."""

    async def sample(self) -> ResourceSample: ...

    async def tree_usage(self, pid: int) -> tuple[int, dict[int, int]]: ...


@dataclass
class ModelEntry:
    """One configured model and everything residency knows about it."""

    name: str
    config: ModelConfig
    adapter: ModelAdapter
    figure: MemoryFigure
    size_key: str
    pinned_by_config: bool
    runtime_pin: bool | None = None
    state: ModelState = ModelState.UNLOADED
    device: str | None = None
    accounted_vram: int = 0
    accounted_ram: int = 0
    # The accounted figures were measured from the running model (not its declared or
    # estimated size), so views label them "measured" whatever the figure's source.
    accounted_measured: bool = False
    in_flight: int = 0
    queued: int = 0
    last_used: float = 0.0
    last_used_wall: float | None = None
    # When (wall clock) the model entered its present state: how long a load has taken.
    state_since_wall: float | None = None
    message: str = ""
    failed_until: float = 0.0
    stale: bool = False
    removed: bool = False
    log_tail: list[str] = field(default_factory=list)
    next_adapter: ModelAdapter | None = field(default=None, repr=False)
    load_task: asyncio.Task[None] | None = field(default=None, repr=False)
    # The maintenance pass's own attempt to load a pinned model (one at a time).
    pin_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pinned(self) -> bool:
        """A runtime pin or unpin overrides the config."""
        return self.pinned_by_config if self.runtime_pin is None else self.runtime_pin

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing waiting."""
        return self.in_flight == 0 and self.queued == 0
