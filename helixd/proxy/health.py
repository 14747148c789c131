"""Health-aware failover: a model that keeps failing is skipped by routes for a while."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from helixd.config import ProxyConfig

log = logging.getLogger("helixd.proxy")


@dataclass
class ModelHealth:
    """Consecutive failures per model (and per one-server provider), and their cooldowns."""

    clock: Callable[[], float] = time.monotonic
    failures: dict[str, int] = field(default_factory=dict)
    until: dict[str, float] = field(default_factory=dict)

    def failed(self, keys: Sequence[str], config: ProxyConfig) -> bool:
        """Count a failure against each key (a model, and a one-server provider as
        ``provider:NAME``); enough in a row starts a cooldown (then True)."""
        started = False
        for key in keys:
            count = self.failures.get(key, 0) + 1
            self.failures[key] = count
            if count >= config.failures_before_cooldown and not self.cooling(key):
                self.until[key] = self.clock() + config.cooldown_s
                log.warning(
                    "%s failed %d times in a row: routes try it last for %g s",
                    key,
                    count,
                    config.cooldown_s,
                )
                started = True
        return started

    def served(self, keys: Sequence[str]) -> None:
        """A success ends the streak and any cooldown of each key."""
        for key in keys:
            self.failures.pop(key, None)
            self.until.pop(key, None)

    def cooling(self, key: str) -> bool:
        """True while ``key`` is cooling down."""
        return self.until.get(key, 0.0) > self.clock()

    def cooling_report(self) -> dict[str, float]:
        """Model (or ``provider:NAME``) → seconds of cooldown left, for status."""
        now = self.clock()
        return {m: round(t - now, 1) for m, t in self.until.items() if t > now}
