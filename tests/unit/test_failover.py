"""The proxy's failover policy, in process: no server, no socket, no loop.

``attempt_in_order`` makes the tries these functions pick; here they are tables of
plans and cool-downs, and hypothesis properties over random ones.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from helixd.config.routes import FAILURE_CLASSES
from helixd.proxy.failover import counts_against, escalates, next_try, schedule
from helixd.proxy.routing import Attempts


def plan(
    order: tuple[str, ...], retries: int = 0, max_attempts: int = 10, **kw: object
) -> Attempts:
    return Attempts("r", order, retries, max_attempts=max_attempts, **kw)  # type: ignore[arg-type]


def made_at(tries: tuple[str, ...], cooling: set[str]) -> list[int]:
    """The indices of the tries made when every one fails and escalates."""
    out, index = [], next_try(tries, 0, cooling.__contains__)
    while index is not None:
        out.append(index)
        index = next_try(tries, index + 1, cooling.__contains__)
    return out


def made(tries: tuple[str, ...], cooling: set[str]) -> list[str]:
    """The models tried when every try fails and escalates, with ``cooling`` fixed."""
    return [tries[i] for i in made_at(tries, cooling)]


def test_each_candidate_gets_its_retries_in_order_up_to_max_attempts() -> None:
    assert schedule(plan(("a", "b"), retries=1)) == ("a", "a", "b", "b")
    assert schedule(plan(("a", "b", "c"), retries=1, max_attempts=3)) == ("a", "a", "b")
    assert schedule(plan(("a",), retries=0, max_attempts=1)) == ("a",)
    # A plain model name: one retry when its server gave no answer.
    assert schedule(Attempts(None, ("m",))) == ("m", "m")


def test_a_cooling_model_is_skipped_while_a_healthy_one_is_ahead_and_else_tried() -> None:
    assert made(("a", "b", "c"), cooling={"a"}) == ["b", "c"]
    assert made(("a", "b", "c"), cooling={"c"}) == ["a", "b", "c"]  # last: always tried
    assert made(("a", "b"), cooling={"a", "b"}) == ["a", "b"]  # nothing healthy ahead
    assert made(("a", "a", "b"), cooling={"a"}) == ["b"]
    assert made((), cooling=set()) == []


def test_only_errors_and_timeouts_count_towards_a_cooldown() -> None:
    assert [k for k in FAILURE_CLASSES if counts_against(k)] == ["error", "timeout"]
    assert not counts_against("final")


def test_a_failure_escalates_only_when_the_plan_says_so() -> None:
    by_name = Attempts(None, ("m",), escalate_on=frozenset({"error"}))
    assert escalates(by_name, "error") and not escalates(by_name, "overloaded")
    route = plan(("a", "b"), escalate_on=frozenset({"error", "timeout", "overloaded"}))
    assert all(escalates(route, k) for k in FAILURE_CLASSES)
    assert not escalates(route, "final")  # an unknown model: no other candidate helps


names = st.lists(st.sampled_from("abcde"), min_size=1, max_size=5, unique=True)


@given(names, st.integers(0, 3), st.integers(1, 12), st.sets(st.sampled_from("abcde")))
def test_failover_properties(
    order: list[str], retries: int, max_attempts: int, cooling: set[str]
) -> None:
    tries = schedule(plan(tuple(order), retries, max_attempts))
    assert len(tries) == min(len(order) * (retries + 1), max_attempts)
    assert list(dict.fromkeys(tries)) == order[: len(dict.fromkeys(tries))]  # order kept
    at = made_at(tries, cooling)
    attempts = [tries[i] for i in at]
    assert at == sorted(set(at))  # forward only, each try at most once
    assert attempts and at[-1] == len(tries) - 1  # the last try is always made
    # A cooling model is tried only when every later try is cooling too.
    for i in at[:-1]:
        if tries[i] in cooling:
            assert all(m in cooling for m in tries[i + 1 :]), (tries, attempts)
    # Nothing healthy is ever skipped.
    assert [m for m in tries if m not in cooling] == [m for m in attempts if m not in cooling]
