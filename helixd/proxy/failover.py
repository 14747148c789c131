"""The failover policy of one request: which attempt comes next, and when to stop.

Pure functions over the request's :class:`~helixd.proxy.routing.Attempts` and what is
known now (which models are cooling down, how the last attempt failed), so the order,
retries, escalation and cool-down rules are tested as tables and properties with no
server, no socket and no loop. :meth:`helixd.proxy.server.ProxyServer.attempt_in_order`
asks them and does the attempts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from helixd.config.routes import FailureClass
from helixd.proxy.attempt import FailureKind
from helixd.proxy.routing import Attempts

# Kinds of failure that count towards a model's cool-down: an answer that never came.
# A busy model (``overloaded``) is healthy, only full.
UNHEALTHY: frozenset[FailureClass] = frozenset({"error", "timeout"})


def schedule(plan: Attempts) -> tuple[str, ...]:
    """Every try the plan allows, in order: each candidate with its retries, cut at
    ``max_attempts``."""
    tries = [model for model in plan.order for _ in range(plan.retries + 1)]
    return tuple(tries[: plan.max_attempts])


def next_try(tries: Sequence[str], start: int, cooling: Callable[[str], bool]) -> int | None:
    """The index of the next try to make, from ``start`` on; None when none is left.

    A model cooling down (its cool-down may have begun during this very request) is
    skipped while a model that is not cooling is still ahead; the last try is always
    made, so a request whose every candidate is cooling still gets an answer.
    """
    for index in range(start, len(tries)):
        last = index == len(tries) - 1
        ahead = tries[index + 1 :]
        if not last and cooling(tries[index]) and any(not cooling(m) for m in ahead):
            continue
        return index
    return None


def counts_against(kind: FailureKind) -> bool:
    """This failure counts towards the model's cool-down."""
    return kind in UNHEALTHY


def escalates(plan: Attempts, kind: FailureKind) -> bool:
    """After this failure the next try is made; otherwise the client gets the failure."""
    return kind in plan.escalate_on
