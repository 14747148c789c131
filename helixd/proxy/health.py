"""Health-aware failover: a model that keeps failing is skipped by routes for a while."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from helixd.config import ProxyConfig

log = logging.getLogger("helixd.proxy")


@dataclass
class ModelHealth:
    """Consecutive failures per model, and the cooldowns they earned."""

    clock: Callable[[], float] = time.monotonic
    failures: dict[str, int] = field(default_factory=dict)
    until: dict[str, float] = field(default_factory=dict)

    def failed(self, model: str, config: ProxyConfig) -> bool:
        """Count a failure; enough in a row starts a cooldown (then True)."""
        count = self.failures.get(model, 0) + 1
        self.failures[model] = count
        if count >= config.failures_before_cooldown and not self.cooling(model):
            self.until[model] = self.clock() + config.cooldown_s
            log.warning(
                "%s failed %d times in a row: routes skip it for %g s",
                model,
                count,
                config.cooldown_s,
            )
            return True
        return False

    def served(self, model: str) -> None:
        """A success ends the streak and any cooldown."""
        self.failures.pop(model, None)
        self.until.pop(model, None)

    def cooling(self, model: str) -> bool:
        """True while ``model`` is cooling down."""
        return self.until.get(model, 0.0) > self.clock()

    def cooling_report(self) -> dict[str, float]:
        """Model → seconds of cooldown left, for status."""
        now = self.clock()
        return {m: round(t - now, 1) for m, t in self.until.items() if t > now}
