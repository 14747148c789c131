"""The alert rules over snapshots with an injected ``now``, and the alert book without
webhooks on a fake clock: no sleeps, no network."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from helixd.config.jobs import AlertsJob
from helixd.jobs.alert_rules import (
    AlertRules,
    Condition,
    DiskView,
    ModelView,
    ProviderView,
    RulesInput,
)
from helixd.jobs.alerts import Alert, AlertBook, redact_url

GIB = 1024**3


def alerts_job(**values: Any) -> AlertsJob:
    """An alerts job config with round test thresholds unless told otherwise."""
    base: dict[str, Any] = {
        "kind": "alerts",
        "interval": 15,
        "provider_down_for": 60,
        "queue_backlog": 10,
        "queue_backlog_for": 30,
        "disk_free_percent": 10,
    }
    base.update(values)
    return AlertsJob.model_validate(base)


def provider(name: str = "ollama", state: str = "ready", message: str = "") -> ProviderView:
    return ProviderView(name=name, state=state, message=message)


def model(
    name: str = "qwen", state: str = "loaded", servable: bool = True, queued: int = 0
) -> ModelView:
    return ModelView(name=name, state=state, servable=servable, queued=queued)


def keys(conditions: list[Condition]) -> set[str]:
    return {c.key for c in conditions}


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- rules: provider_down ------------------------------------------------------------


@pytest.mark.parametrize("state", ["failed", "unhealthy", "backoff"])
def test_provider_down_fires_after_it_lasted(state: str) -> None:
    rules = AlertRules(alerts_job())
    snap = RulesInput(providers=[provider(state=state, message="exit code 1")])

    fired, pending = rules.evaluate(snap, now=1000.0)
    assert fired == [] and pending == {"provider_down:ollama"}

    fired, pending = rules.evaluate(snap, now=1059.9)
    assert fired == [] and pending == {"provider_down:ollama"}

    fired, pending = rules.evaluate(snap, now=1060.0)
    assert pending == set()
    [condition] = fired
    assert condition.key == "provider_down:ollama"
    assert condition.severity == "error"
    assert state in condition.message and "exit code 1" in condition.message
    assert "helixctl logs ollama" in condition.message


@pytest.mark.parametrize("state", ["ready", "starting", "stopped", "stopping"])
def test_provider_not_down(state: str) -> None:
    rules = AlertRules(alerts_job())
    fired, pending = rules.evaluate(RulesInput(providers=[provider(state=state)]), now=0.0)
    assert fired == [] and pending == set()


def test_provider_seen_up_resets_the_timer() -> None:
    rules = AlertRules(alerts_job())
    down = RulesInput(providers=[provider(state="failed")])
    up = RulesInput(providers=[provider(state="ready")])

    rules.evaluate(down, now=0.0)
    rules.evaluate(down, now=50.0)
    assert rules.evaluate(up, now=55.0) == ([], set())
    # Down again: the 60 s count from here, not from 0.
    assert rules.evaluate(down, now=70.0) == ([], {"provider_down:ollama"})
    assert rules.evaluate(down, now=129.0)[0] == []
    assert keys(rules.evaluate(down, now=130.0)[0]) == {"provider_down:ollama"}


def test_providers_are_timed_separately() -> None:
    rules = AlertRules(alerts_job())
    rules.evaluate(RulesInput(providers=[provider("a", "failed")]), now=0.0)
    snap = RulesInput(providers=[provider("a", "failed"), provider("b", "unhealthy")])
    fired, pending = rules.evaluate(snap, now=60.0)
    assert keys(fired) == {"provider_down:a"} and pending == {"provider_down:b"}


# -- rules: no_model_servable --------------------------------------------------------


def test_no_model_servable_is_critical_after_it_lasted() -> None:
    rules = AlertRules(alerts_job())
    snap = RulesInput(
        models=[model("a", "failed", servable=False), model("b", "unloaded", servable=False)]
    )
    assert rules.evaluate(snap, now=0.0) == ([], {"no_model_servable"})
    [condition] = rules.evaluate(snap, now=60.0)[0]
    assert condition.key == "no_model_servable" and condition.severity == "critical"
    assert condition.message.startswith("all models offline: a (failed), b (unloaded)")


def test_one_servable_model_is_enough() -> None:
    rules = AlertRules(alerts_job())
    snap = RulesInput(models=[model("a", "failed", servable=False), model("b", servable=True)])
    assert rules.evaluate(snap, now=0.0) == ([], set())
    assert rules.evaluate(snap, now=1000.0) == ([], set())


def test_no_models_at_all_is_not_an_outage() -> None:
    rules = AlertRules(alerts_job())
    assert rules.evaluate(RulesInput(), now=0.0) == ([], set())


def test_no_model_servable_lists_five_and_counts_the_rest() -> None:
    rules = AlertRules(alerts_job())
    models = [model(f"m{i}", "failed", servable=False) for i in range(8)]
    rules.evaluate(RulesInput(models=models), now=0.0)
    [condition] = rules.evaluate(RulesInput(models=models), now=60.0)[0]
    assert "m4 (failed)" in condition.message and "m5" not in condition.message
    assert "and 3 more" in condition.message


# -- rules: queue_backlog ------------------------------------------------------------


def test_queue_backlog_needs_more_than_the_limit_for_long_enough() -> None:
    rules = AlertRules(alerts_job())
    at_limit = RulesInput(models=[model(queued=10)])
    over = RulesInput(models=[model(queued=11)])

    assert rules.evaluate(at_limit, now=0.0) == ([], set())
    assert rules.evaluate(over, now=1.0) == ([], {"queue_backlog:qwen"})
    [condition] = rules.evaluate(over, now=31.0)[0]
    assert condition.key == "queue_backlog:qwen" and condition.severity == "warning"
    assert "11 requests" in condition.message
    # The queue drained: the timer starts over.
    assert rules.evaluate(at_limit, now=32.0) == ([], set())
    assert rules.evaluate(over, now=33.0) == ([], {"queue_backlog:qwen"})


# -- rules: budget and disk ----------------------------------------------------------


def test_budget_fires_at_once_with_its_reason() -> None:
    rules = AlertRules(alerts_job())
    snap = RulesInput(budgets_exceeded={"openrouter": "spent $5.10 of $5.00 today"})
    fired, pending = rules.evaluate(snap, now=0.0)
    assert fired == [Condition("budget:openrouter", "error", "spent $5.10 of $5.00 today")]
    assert pending == set()


@pytest.mark.parametrize(
    ("free_percent", "severity"),
    [
        (50.0, None),
        (10.0, None),
        (9.9, "warning"),
        (5.0, "warning"),
        (4.9, "error"),
        (0.0, "error"),
    ],
)
def test_disk_severity_by_threshold(free_percent: float, severity: str | None) -> None:
    rules = AlertRules(alerts_job(disk_free_percent=10))
    total = 1000 * GIB
    disk = DiskView("/var/lib/helixd", int(total * free_percent / 100), total)
    fired, pending = rules.evaluate(RulesInput(disks=[disk]), now=0.0)
    assert pending == set()
    if severity is None:
        assert fired == []
    else:
        [condition] = fired
        assert condition.key == "disk:/var/lib/helixd" and condition.severity == severity
        assert "/var/lib/helixd" in condition.message
        assert f"{free_percent:.1f}%" in condition.message and "GiB" in condition.message


def test_disk_of_unknown_size_is_ignored() -> None:
    rules = AlertRules(alerts_job())
    assert rules.evaluate(RulesInput(disks=[DiskView("/proc", 0, 0)]), now=0.0) == ([], set())


def test_configure_changes_thresholds() -> None:
    rules = AlertRules(alerts_job())
    snap = RulesInput(
        providers=[provider(state="failed")],
        models=[model(queued=15)],
        disks=[DiskView("/d", 20 * GIB, 100 * GIB)],
    )
    fired, pending = rules.evaluate(snap, now=0.0)
    assert fired == [] and pending == {"provider_down:ollama", "queue_backlog:qwen"}

    rules.configure(
        alerts_job(provider_down_for=5, queue_backlog=20, queue_backlog_for=5, disk_free_percent=30)
    )
    fired, pending = rules.evaluate(snap, now=5.0)
    # Down since 0 is past the new 5 s; 15 queued is no longer a backlog; 20% free is
    # now a warning (under 30, not under 15).
    assert {(c.key, c.severity) for c in fired} == {
        ("provider_down:ollama", "error"),
        ("disk:/d", "warning"),
    }
    assert pending == set()


# -- the book: firing and resolving --------------------------------------------------


def test_fires_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    book = AlertBook(None, clock=clock)
    with caplog.at_level(logging.INFO, logger="helixd.alerts"):
        first = book.fire("inference:qwen", "error", "no answer in 30 s", source="health")
        clock.now += 10
        again = book.fire("inference:qwen", "error", "no answer in 30 s", source="health")
    assert first is not None and again is None
    assert first.fired_at == 1_700_000_000.0 and first.status == "firing"
    assert [a.key for a in book.active()] == ["inference:qwen"]
    assert book.fired == 1
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "ALERT [error] inference:qwen: no answer in 30 s"


@pytest.mark.parametrize(
    ("severity", "level"),
    [
        ("info", logging.INFO),
        ("warning", logging.WARNING),
        ("error", logging.ERROR),
        ("critical", logging.CRITICAL),
    ],
)
def test_log_level_follows_severity(
    severity: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    book = AlertBook(None)
    with caplog.at_level(logging.DEBUG, logger="helixd.alerts"):
        book.fire("k", severity, "m", source="jobs")
    assert [r.levelno for r in caplog.records] == [level]


def test_escalation_updates_and_lower_severity_only_refreshes_the_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    book = AlertBook(None, clock=clock)
    book.fire("gpu_oom:qwen", "warning", "first", source="residency")
    clock.now += 5
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="helixd.alerts"):
        escalated = book.fire("gpu_oom:qwen", "error", "worse", source="residency")
        lower = book.fire("gpu_oom:qwen", "warning", "calmer", source="residency")
    assert escalated is not None and lower is None
    [alert] = book.active()
    assert (alert.severity, alert.message) == ("error", "calmer")
    assert alert.fired_at == 1_700_000_000.0  # firing since the first time
    assert [r.getMessage() for r in caplog.records] == ["ALERT [error] gpu_oom:qwen: worse"]
    assert book.fired == 2


def test_unknown_severity_is_refused() -> None:
    with pytest.raises(ValueError, match="severity"):
        AlertBook(None).fire("k", "fatal", "m", source="jobs")


def test_resolve(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    book = AlertBook(None, clock=clock)
    book.fire("update_failed:ollama", "error", "rolled back", source="update")
    clock.now += 30
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="helixd.alerts"):
        alert = book.resolve("update_failed:ollama", "update succeeded")
        assert book.resolve("update_failed:ollama") is None
        assert book.resolve("never:fired") is None
    assert alert is not None
    assert alert.resolved_at == 1_700_000_030.0 and alert.resolution == "update succeeded"
    assert book.active() == [] and book.recent() == [alert]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "RESOLVED update_failed:ollama: update succeeded")
    ]
    # Fires anew after resolving.
    assert book.fire("update_failed:ollama", "error", "again", source="update") is not None


def test_active_order_and_counts() -> None:
    clock = FakeClock()
    book = AlertBook(None, clock=clock)
    for key, severity in [("w1", "warning"), ("c1", "critical"), ("w2", "warning"), ("i", "info")]:
        book.fire(key, severity, "m", source="jobs")
        clock.now += 1
    assert [a.key for a in book.active()] == ["c1", "w1", "w2", "i"]
    assert book.counts() == {"info": 1, "warning": 2, "error": 0, "critical": 1}


def test_history_is_bounded_and_newest_first() -> None:
    clock = FakeClock()
    book = AlertBook(None, clock=clock, history=3)
    for i in range(5):
        book.fire(f"k{i}", "warning", "m", source="jobs")
        clock.now += 1
        book.resolve(f"k{i}")
    assert [a.key for a in book.recent()] == ["k4", "k3", "k2"]
    assert [a.key for a in book.recent(limit=1)] == ["k4"]


def test_info_shape() -> None:
    clock = FakeClock()
    book = AlertBook(None, clock=clock)
    book.fire("disk:/var/lib/helixd", "warning", "low", source="rules")
    book.fire("job_failed:backup", "error", "tar failed", source="jobs")
    book.resolve("job_failed:backup", "next run succeeded")

    info = book.info()
    assert info["resolved"] == []
    [active] = info["active"]
    assert active == {
        "key": "disk:/var/lib/helixd",
        "severity": "warning",
        "status": "firing",
        "message": "low",
        "source": "rules",
        "fired_at": "2023-11-14T22:13:20Z",
        "fired_at_epoch": 1_700_000_000.0,
        "resolved_at": None,
        "resolved_at_epoch": None,
        "resolution": "",
    }
    [resolved] = book.info(include_resolved=True)["resolved"]
    assert resolved["status"] == "resolved" and resolved["resolution"] == "next run succeeded"
    assert resolved["resolved_at"] == "2023-11-14T22:13:20Z"
    json.dumps(info)  # the API sends it as is


# -- the book: persistence -----------------------------------------------------------


def test_persistence_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "alerts.json"
    clock = FakeClock()
    book = AlertBook(path, clock=clock)
    book.fire("provider_down:ollama", "error", "failed", source="rules")
    book.fire("old", "warning", "was", source="jobs")
    clock.now += 60
    book.resolve("old", "fixed")

    again = AlertBook(path, clock=clock)
    assert [a.as_json() for a in again.active()] == [a.as_json() for a in book.active()]
    assert [a.as_json() for a in again.recent()] == [a.as_json() for a in book.recent()]
    # Still active after the restart: firing again is a no-op, not a second page.
    assert again.fire("provider_down:ollama", "error", "failed", source="rules") is None


def test_loading_keeps_the_newest_resolved_within_the_history(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    clock = FakeClock()
    book = AlertBook(path, clock=clock)
    for i in range(4):
        book.fire(f"k{i}", "info", "m", source="jobs")
        clock.now += 1
        book.resolve(f"k{i}")
    assert [a.key for a in AlertBook(path, history=2).recent()] == ["k3", "k2"]


def test_corrupt_file_is_tolerated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "alerts.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="helixd.alerts"):
        book = AlertBook(path)
    assert book.active() == [] and book.recent() == []
    assert "unreadable" in caplog.text
    book.fire("k", "warning", "m", source="jobs")
    assert [a.key for a in AlertBook(path).active()] == ["k"]


def test_malformed_entries_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    good = Alert("good", "error", "m", "rules", fired_at=5.0).as_json()
    path.write_text(
        json.dumps(
            {
                "active": [good, {"key": "no-time"}, "junk", {**good, "key": "x", "severity": "?"}],
                "resolved": {"not": "a list"},
            }
        )
    )
    book = AlertBook(path)
    assert [a.key for a in book.active()] == ["good"] and book.recent() == []
    assert AlertBook(tmp_path / "missing.json").active() == []
    (tmp_path / "list.json").write_text("[]")
    assert AlertBook(tmp_path / "list.json").active() == []


def test_write_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    book = AlertBook(blocker / "alerts.json")  # its parent is a file: every write fails
    with caplog.at_level(logging.WARNING, logger="helixd.alerts"):
        assert book.fire("k", "error", "m", source="jobs") is not None
    assert "cannot save alerts" in caplog.text
    assert [a.key for a in book.active()] == ["k"]


# -- the book: sync ------------------------------------------------------------------


def test_sync_fires_and_resolves_only_its_own_source() -> None:
    book = AlertBook(None)
    book.fire("job_failed:backup", "error", "tar failed", source="jobs")
    book.sync("rules", [Condition("disk:/d", "warning", "low")], pending=())
    assert {a.key for a in book.active()} == {"disk:/d", "job_failed:backup"}
    assert book.active()[1].source == "rules"

    book.sync("rules", [], pending=())
    assert [a.key for a in book.active()] == ["job_failed:backup"]
    [resolved] = book.recent()
    assert resolved.key == "disk:/d" and resolved.resolution == "condition cleared"


def test_sync_with_pending_keeps_a_loaded_alert_alive(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    before = AlertBook(path)
    before.sync("rules", [Condition("provider_down:ollama", "error", "failed")], pending=())

    # The daemon restarts: the book remembers the alert, the rules start timing afresh.
    book = AlertBook(path)
    rules = AlertRules(alerts_job(provider_down_for=60))
    down = RulesInput(providers=[provider(state="failed")])
    for now in (0.0, 30.0, 59.0):
        book.sync("rules", *rules.evaluate(down, now=now))
        assert [a.key for a in book.active()] == ["provider_down:ollama"]
        assert book.recent() == [] and book.fired == 0
    book.sync("rules", *rules.evaluate(down, now=60.0))  # matured: already firing, no re-fire
    assert book.fired == 0

    book.sync("rules", *rules.evaluate(RulesInput(providers=[provider()]), now=61.0))
    assert book.active() == []
    assert [a.resolution for a in book.recent()] == ["condition cleared"]


def test_redact_url() -> None:
    assert redact_url("https://u:secret@hooks.example/x/y?token=s") == "https://hooks.example/x/y"
    assert redact_url("http://[::1]:8080/h") == "http://[::1]:8080/h"


def test_disk_views_measure_each_filesystem_once_and_skip_missing_paths(tmp_path: Path) -> None:
    from helixd.jobs.alert_check import disk_views

    (tmp_path / "model.gguf").write_bytes(b"x")
    views = disk_views([tmp_path, tmp_path / "model.gguf", tmp_path / "not-mounted" / "m"])
    assert len(views) == 1 and views[0].path == str(tmp_path)
    assert 0 < views[0].free_bytes <= views[0].total_bytes


def test_a_message_only_refresh_is_not_written_until_the_next_change(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    book = AlertBook(path, clock=FakeClock())
    book.fire("disk:/var", "warning", "9.1 GiB free (8%)", source="rules")
    written = path.read_text()
    book.fire("disk:/var", "warning", "9.0 GiB free (8%)", source="rules")
    assert path.read_text() == written  # no fsyncs on the loop for a changing figure
    assert book.active()[0].message == "9.0 GiB free (8%)"
    book.resolve("disk:/var", "condition cleared")
    assert "9.0 GiB free" in path.read_text()
