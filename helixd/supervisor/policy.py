"""The restart policy: a pure decision on what to do after a process ended.

No clock, no I/O, no randomness of its own: the caller passes ``now`` and a jitter
source, which keeps every branch unit-testable without sleeping.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ExitInfo:
    """How a process ended: an exit code, a signal, or a reason helixd gave it."""

    code: int | None
    signal: int | None
    reason: str  # "exited", "start-timeout", "unhealthy", "spawn-error"

    @property
    def clean(self) -> bool:
        """Exit code 0 on its own accord."""
        return self.reason == "exited" and self.code == 0


@dataclass(frozen=True)
class RestartCounters:
    """What the policy remembers between runs of one process."""

    failed_starts: int = 0  # consecutive starts that never became ready
    consecutive_restarts: int = 0  # restarts since the process was last stable


@dataclass(frozen=True)
class Decision:
    """``restart`` after ``delay_s``, or settle in ``stopped`` / ``failed``."""

    action: Literal["restart", "stopped", "failed"]
    delay_s: float
    counters: RestartCounters
    why: str


@dataclass(frozen=True)
class RestartPolicy:
    """supervisord-style restarts with exponential backoff and jitter.

    A start that never became ready counts against ``start_retries``; past that the
    process is ``failed``. A process that was ready and then died is restarted (per
    ``restart``) with a delay that doubles each time, capped at ``backoff_max_s``; the
    doubling starts over once a run has stayed up ``backoff_reset_s``.
    """

    restart: str
    start_retries: int
    backoff_initial_s: float
    backoff_max_s: float
    backoff_reset_s: float
    jitter: Callable[[], float] = random.random

    def after_exit(
        self,
        exit: ExitInfo,
        counters: RestartCounters,
        became_ready: bool,
        ran_for_s: float,
    ) -> Decision:
        """Decide what follows a process ending on its own (never after a requested stop)."""
        if became_ready:
            stable = ran_for_s >= self.backoff_reset_s
            counters = RestartCounters(
                failed_starts=0,
                consecutive_restarts=0 if stable else counters.consecutive_restarts,
            )
        else:
            counters = RestartCounters(
                failed_starts=counters.failed_starts + 1,
                consecutive_restarts=counters.consecutive_restarts,
            )
            if counters.failed_starts > self.start_retries:
                return Decision(
                    "failed",
                    0.0,
                    counters,
                    f"gave up after {counters.failed_starts} failed starts "
                    f"(start_retries = {self.start_retries})",
                )
        wants_restart = self.restart == "always" or (
            self.restart == "on-failure" and not exit.clean
        )
        if exit.reason == "unhealthy":
            wants_restart = self.restart != "never"
        if not wants_restart:
            if exit.clean:
                return Decision("stopped", 0.0, counters, "exited with code 0")
            return Decision("failed", 0.0, counters, f"{describe_exit(exit)}; restart = never")
        delay = self.delay_for(counters.consecutive_restarts)
        counters = RestartCounters(counters.failed_starts, counters.consecutive_restarts + 1)
        return Decision("restart", delay, counters, describe_exit(exit))

    def delay_for(self, attempt: int) -> float:
        """Exponential delay for the ``attempt``-th restart, with up to 25 % of jitter.

        Jitter keeps several crashed processes (or several hosts) from restarting in step.
        """
        base = min(self.backoff_max_s, self.backoff_initial_s * float(2 ** min(attempt, 32)))
        jitter = float(self.jitter())
        return min(self.backoff_max_s, base * (1.0 + 0.25 * jitter))


def describe_exit(exit: ExitInfo) -> str:
    """A short human phrase for how a process ended."""
    if exit.reason == "start-timeout":
        return "did not become ready within start_seconds"
    if exit.reason == "unhealthy":
        return "failed its health checks"
    if exit.reason == "spawn-error":
        return "could not be started"
    if exit.signal is not None:
        try:
            name = signal.Signals(exit.signal).name
        except ValueError:
            name = str(exit.signal)
        return f"killed by {name}"
    return f"exited with code {exit.code}"
