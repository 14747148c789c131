"""The words of supervision, decided without processes: probe summaries and stop notes."""

from __future__ import annotations

import signal

from helixd.supervisor.health import ProbeResult, ProbeTally
from helixd.supervisor.policy import (
    ExitInfo,
    RestartCounters,
    RestartPolicy,
    describe_exit,
    describe_stop,
)
from helixd.supervisor.spec import HealthProbe

HEALTH = HealthProbe("http", "/health", 30, 5, 3)
REFUSED = ProbeResult(False, "connection refused on 127.0.0.1:8080", "refused")
NOT_FOUND = ProbeResult(False, "GET /health answered HTTP 404", "http", 404)
LOADING = ProbeResult(False, "GET /health answered HTTP 503", "http", 503)
SILENT = ProbeResult(False, "no answer within 5 s", "timeout")


def tally(*results: ProbeResult) -> ProbeTally:
    t = ProbeTally()
    for result in results:
        t.add(result, "/health")
    return t


def test_one_answer_on_every_probe_is_named_with_its_fix() -> None:
    said = tally(*[NOT_FOUND] * 12).summary(HEALTH, 8080)
    assert said == (
        "GET /health answered HTTP 404 on every probe (12 probes): "
        'this server has no /health; set health = { path = "/v1/models" }'
    )


def test_refusals_before_the_latest_answer_are_context_not_the_news() -> None:
    said = tally(REFUSED, REFUSED, LOADING, LOADING, LOADING).summary(HEALTH, 8080)
    assert said.startswith(
        "GET /health answered HTTP 503 on the last 3 of 5 probes "
        "(before that: connection refused on 127.0.0.1:8080): it is still loading"
    )
    assert "start_seconds" in said


def test_refused_and_silent_servers_get_their_own_hints() -> None:
    refused = tally(REFUSED).summary(HEALTH, 8080)
    assert refused.startswith("connection refused on 127.0.0.1:8080 on every probe (1 probe): ")
    assert "is it listening on port 8080? Its command must use {port}" in refused
    assert "health.timeout_s" in tally(SILENT, SILENT).summary(HEALTH, 8080)


def test_a_404_on_v1_models_does_not_suggest_v1_models() -> None:
    models = ProbeResult(False, "GET /v1/models answered HTTP 404", "http", 404)
    t = ProbeTally()
    t.add(models, "/v1/models")
    assert "set health.path to one it answers" in t.summary(HEALTH, 8080)


def test_no_probe_at_all_says_so() -> None:
    assert ProbeTally().summary(HEALTH, 8080) == "no probe ran before start_seconds passed"


def test_start_timeout_carries_what_the_probes_answered() -> None:
    exit = ExitInfo(None, signal.SIGTERM, "start-timeout", "GET /health answered HTTP 404 …")
    assert describe_exit(exit) == (
        "did not become ready within start_seconds: GET /health answered HTTP 404 …"
    )


def test_failed_starts_quote_the_configured_retries_and_the_last_cause() -> None:
    policy = RestartPolicy("on-failure", 1, 1.0, 60.0, 30.0, jitter=lambda: 0.0)
    crash = ExitInfo(3, None, "exited")
    counters = policy.after_exit(crash, RestartCounters(), False, 0).counters
    decision = policy.after_exit(crash, counters, False, 0)
    assert decision.why == (
        "gave up after 2 failed starts (start_retries = 1); "
        "the last one exited with code 3 while starting"
    )
    once = RestartPolicy("never", 0, 1.0, 60.0, 30.0, one_run="the scheduler decides")
    decision = once.after_exit(crash, RestartCounters(), False, 0)
    assert decision.action == "failed"
    assert decision.why == "exited with code 3 while starting; the scheduler decides"
    killed = ExitInfo(None, signal.SIGKILL, "exited")
    decision = once.after_exit(killed, RestartCounters(), True, 5)
    assert (decision.action, decision.why) == ("failed", "killed by SIGKILL; the scheduler decides")
    clean = once.after_exit(ExitInfo(0, None, "exited"), RestartCounters(), True, 5)
    assert clean.action == "stopped"


TERM = frozenset({signal.SIGTERM})
TERM_THEN_KILL = frozenset({signal.SIGINT, signal.SIGKILL})


def stop(returncode: int, ended_before: bool = False, sent: frozenset[int] = TERM) -> ExitInfo:
    return describe_stop(
        returncode, ended_before=ended_before, sent=sent, stop_signal=signal.SIGTERM, grace_s=10
    )


def test_a_stop_that_went_to_plan_is_stopped_on_request() -> None:
    exit = stop(-signal.SIGTERM)
    assert (exit.reason, exit.signal, describe_exit(exit)) == (
        "stopped",
        signal.SIGTERM,
        "stopped on request",
    )
    # A server that exits 0 on SIGTERM was stopped on request just the same.
    assert describe_exit(stop(0)) == "stopped on request"
    # One that a restart under way had signalled already, and had ended: helixd's doing.
    assert describe_exit(stop(0, ended_before=True)) == "stopped on request"


def test_a_stop_that_took_sigkill_says_so() -> None:
    exit = describe_stop(
        -signal.SIGKILL,
        ended_before=False,
        sent=TERM_THEN_KILL,
        stop_signal=signal.SIGINT,
        grace_s=30,
    )
    assert describe_exit(exit) == (
        "stopped on request: still running 30 s after SIGINT (stop_timeout_s), so killed by SIGKILL"
    )


def test_a_death_helixd_did_not_cause_is_never_a_stop() -> None:
    before = stop(-signal.SIGKILL, ended_before=True, sent=frozenset())
    assert before.reason == "exited" and before.signal == signal.SIGKILL
    assert describe_exit(before).startswith("killed by SIGKILL, not by helixd (a kill from outside")
    # SIGKILL during the grace, which helixd had not sent yet: someone else's (the OOM killer).
    during = stop(-signal.SIGKILL)
    assert describe_exit(during).startswith("killed by SIGKILL, not by helixd")
    crashed = stop(1, ended_before=True, sent=frozenset())
    assert describe_exit(crashed) == "exited with code 1 before the stop"
