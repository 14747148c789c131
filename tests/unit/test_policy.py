"""The restart policy, decided without clocks or processes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from helixd.supervisor.policy import ExitInfo, RestartCounters, RestartPolicy


def policy(restart: str = "on-failure", retries: int = 3, jitter: float = 0.0) -> RestartPolicy:
    return RestartPolicy(restart, retries, 1.0, 60.0, 30.0, jitter=lambda: jitter)


CRASH = ExitInfo(code=1, signal=None, reason="exited")
KILLED = ExitInfo(code=None, signal=9, reason="exited")
CLEAN = ExitInfo(code=0, signal=None, reason="exited")


def test_failed_starts_are_retried_then_fail() -> None:
    p, counters = policy(retries=2), RestartCounters()
    for _ in range(2):
        decision = p.after_exit(CRASH, counters, became_ready=False, ran_for_s=0)
        assert decision.action == "restart"
        counters = decision.counters
    decision = p.after_exit(CRASH, counters, became_ready=False, ran_for_s=0)
    assert decision.action == "failed"
    assert "3 failed starts" in decision.why


def test_backoff_doubles_and_caps() -> None:
    p, counters, delays = policy(), RestartCounters(), []
    for _ in range(8):
        decision = p.after_exit(KILLED, counters, became_ready=True, ran_for_s=1)
        delays.append(decision.delay_s)
        counters = decision.counters
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_stable_run_resets_the_backoff() -> None:
    p = policy()
    counters = RestartCounters(failed_starts=0, consecutive_restarts=5)
    decision = p.after_exit(KILLED, counters, became_ready=True, ran_for_s=31)
    assert decision.delay_s == 1.0


def test_ready_then_crash_resets_failed_starts() -> None:
    decision = policy(retries=1).after_exit(
        CRASH, RestartCounters(failed_starts=1), became_ready=True, ran_for_s=1
    )
    assert decision.action == "restart" and decision.counters.failed_starts == 0


def test_policies_on_clean_and_failed_exits() -> None:
    assert policy("on-failure").after_exit(CLEAN, RestartCounters(), True, 5).action == "stopped"
    assert policy("always").after_exit(CLEAN, RestartCounters(), True, 5).action == "restart"
    assert policy("never").after_exit(CRASH, RestartCounters(), True, 5).action == "failed"
    assert policy("never").after_exit(CLEAN, RestartCounters(), True, 5).action == "stopped"


def test_unhealthy_restarts_unless_never() -> None:
    unhealthy = ExitInfo(code=None, signal=15, reason="unhealthy")
    assert (
        policy("on-failure").after_exit(unhealthy, RestartCounters(), True, 5).action == "restart"
    )


@given(
    attempt=st.integers(min_value=0, max_value=10_000),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_delay_is_bounded_and_jitter_adds_at_most_a_quarter(attempt: int, jitter: float) -> None:
    p = policy(jitter=jitter)
    base = min(60.0, 1.0 * 2 ** min(attempt, 32))
    delay = p.delay_for(attempt)
    assert base <= delay <= min(60.0, base * 1.25) + 1e-9


@given(st.lists(st.sampled_from(["crash", "killed", "clean", "nostart"]), max_size=30))
def test_any_exit_sequence_gives_a_valid_decision(events: list[str]) -> None:
    p, counters = policy("always", retries=5), RestartCounters()
    for event in events:
        exit_info = {"crash": CRASH, "killed": KILLED, "clean": CLEAN, "nostart": CRASH}[event]
        decision = p.after_exit(exit_info, counters, event != "nostart", 1.0)
        assert decision.action in ("restart", "failed", "stopped")
        assert 0 <= decision.delay_s <= 60
        if decision.action != "restart":
            assert decision.action == "failed" and counters.failed_starts >= 5
            return
        counters = decision.counters
