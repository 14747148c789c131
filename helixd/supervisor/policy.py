"""The restart policy: a pure decision on what to do after a process ended.

No clock, no I/O, no randomness of its own: the caller passes ``now`` and a jitter
source, which keeps every branch unit-testable without sleeping.
"""

from __future__ import annotations

import dataclasses
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
    reason: str  # "exited", "start-timeout", "unhealthy", "spawn-error", "stopped"
    # start-timeout: what the probes answered; stopped: how the stop went.
    detail: str = ""

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
    # One run only, for this reason (a model's process: the scheduler decides what follows).
    one_run: str | None = None

    def after_exit(
        self,
        exit: ExitInfo,
        counters: RestartCounters,
        became_ready: bool,
        ran_for_s: float,
    ) -> Decision:
        """Decide what follows a process ending on its own (never after a requested stop)."""
        if self.one_run is not None:
            phrase = describe_exit(exit) if became_ready else _failed_start(exit)
            action: Literal["stopped", "failed"] = "failed"
            if became_ready and exit.clean:
                action = "stopped"
            return Decision(action, 0.0, counters, f"{phrase}; {self.one_run}")
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
                n = counters.failed_starts
                return Decision(
                    "failed",
                    0.0,
                    counters,
                    f"gave up after {n} failed start{'s' if n != 1 else ''} "
                    f"(start_retries = {self.start_retries}); the last one {_failed_start(exit)}",
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


def _failed_start(exit: ExitInfo) -> str:
    """How a start that never became ready ended, as a phrase."""
    if exit.reason == "exited":
        return f"{describe_exit(exit)} while starting"
    return describe_exit(exit)


def describe_exit(exit: ExitInfo) -> str:
    """A short human phrase for how a process ended."""
    if exit.reason == "start-timeout":
        said = "did not become ready within start_seconds"
        return f"{said}: {exit.detail}" if exit.detail else said
    if exit.detail:
        return exit.detail
    if exit.reason == "stopped":
        return "stopped on request"
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


def describe_stop(
    returncode: int,
    *,
    ended_before: bool,
    sent: frozenset[int],
    stop_signal: signal.Signals,
    grace_s: float,
) -> ExitInfo:
    """How a process that helixd was asked to stop ended, and whose doing it was.

    ``returncode`` is Popen's (-N: signal N); ``ended_before``: the process had already
    ended when the stop reached it; ``sent``: every signal helixd sent this run of it
    (this stop's, or a restart's under way); SIGKILL among them after ``stop_signal``
    means the grace ran out. A death helixd did not cause (``kill -9`` from outside, the
    kernel's out-of-memory killer) is reported as such, never as a stop.
    """
    code, sig = (None, -returncode) if returncode < 0 else (returncode, None)
    if (sig is not None and sig not in sent) or (ended_before and not sent):
        own = ExitInfo(code, sig, "exited")
        if sig is None:
            return dataclasses.replace(own, detail=f"{describe_exit(own)} before the stop")
        who = ""
        if sig == signal.SIGKILL:
            who = " (a kill from outside, or the kernel's out-of-memory killer: see dmesg)"
        return dataclasses.replace(own, detail=f"{describe_exit(own)}, not by helixd{who}")
    if sig == signal.SIGKILL and stop_signal != signal.SIGKILL:
        detail = (
            f"stopped on request: still running {grace_s:g} s after {stop_signal.name} "
            "(stop_timeout_s), so killed by SIGKILL"
        )
        return ExitInfo(code, sig, "stopped", detail)
    return ExitInfo(code, sig, "stopped", "stopped on request")
