"""Scheduled jobs end to end: the real daemon, real helixctl, real provider processes.

The health job finds a wedged inference path (the llama.cpp fake's SIGUSR1: its probe
still answers, generations fail), restarts the model and alerts, and the alert resolves;
a webhook receiver (a real HTTP server here) gets both, while a webhook that never
answers delays nothing. Rotations load and unload the sets they name.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for_sync
from tests.e2e.gpu_host import FAKES
from tests.e2e.views import models, states


class Receiver:
    """A webhook receiver: records each JSON body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def got(self, key: str, status: str) -> bool:
        return any(b["alert"]["key"] == key and b["alert"]["status"] == status for b in self.bodies)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A webhook URL whose server accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/never"
    sock.close()


def llama_config(tmp_path: Path, models_toml: str, jobs_toml: str) -> str:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"mib": 8}))
    return f"""
[providers.llama]
kind = "llamacpp"
command = ["{{python}}", "{FAKES / "llama_server.py"}", "-m", "{{model_path}}",
           "--host", "{{host}}", "--port", "{{port}}"]
health = {{ interval_s = 1 }}
start_seconds = 30
stop_timeout_s = 5

{models_toml}

{jobs_toml}
"""


def model_toml(tmp_path: Path, name: str, extra: str = "") -> str:
    return (
        f'[models.{name}]\nprovider = "llama"\npath = "{tmp_path / (name + ".json")}"\n'
        f"ram_mib = 64\nvram_mib = 0\n{extra}\n"
    )


def alerts(helix: Any) -> dict[str, Any]:
    result = helix.ctl("--json", "alerts", "--all")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_health_job_restarts_a_wedged_model_and_alerts_until_it_answers(
    helix: Any, tmp_path: Path, receiver: Receiver, black_hole: str
) -> None:
    jobs = f"""
[jobs.health]
kind = "health"
interval = "1s"
request_timeout_s = 5

[jobs.alerts]
kind = "alerts"
interval = "1s"
webhooks = [
  {{ url = "{black_hole}", timeout_s = 30, retries = 0 }},
  {{ url = "{receiver.url}", min_severity = "info" }},
]
"""
    h = helix(llama_config(tmp_path, model_toml(tmp_path, "a"), jobs))
    assert h.ctl("load", "a").returncode == 0
    first_pid = models(h)["a"]["process"]["pid"]
    os.kill(first_pid, signal.SIGUSR1)  # /health still 200; generations now fail

    def restarted() -> bool:
        m = models(h)["a"]
        return m["state"] == "loaded" and (m.get("process") or {}).get("pid") not in (
            None,
            first_pid,
        )

    wait_for_sync(restarted, 30, what="the health job to restart model a")
    # The alert fired with the reason, reached the good webhook despite the black hole,
    # and resolves once the restarted model answers the next run.
    wait_for_sync(lambda: receiver.got("inference:a", "firing"), 30, what="the firing webhook")
    firing = next(b for b in receiver.bodies if b["alert"]["key"] == "inference:a")
    assert firing["alert"]["severity"] == "error"
    assert "illegal memory access" in firing["alert"]["message"]
    assert "restarted it" in firing["alert"]["message"]
    wait_for_sync(lambda: receiver.got("inference:a", "resolved"), 30, what="the resolution")
    resolved = [a["key"] for a in alerts(h)["resolved"]]
    assert "inference:a" in resolved
    assert "inference:a" not in [a["key"] for a in alerts(h)["active"]]
    # helixctl shows the job and its last run.
    listing = h.ctl("jobs")
    assert listing.returncode == 0 and "health" in listing.stdout
    jobs_doc = json.loads(h.ctl("--json", "jobs").stdout)["jobs"]
    health = next(j for j in jobs_doc if j["name"] == "health")
    assert health["schedule"] == "every 1s" and health["last_run"]["result"] in ("ok", "failed")
    assert "restarting model a" in h.stderr() or "model a: restarting it" in h.stderr()


def test_a_provider_that_keeps_failing_raises_an_alert_on_the_webhook(
    helix: Any, receiver: Receiver, black_hole: str
) -> None:
    h = helix(
        f"""
[providers.broken]
kind = "openai"
command = ["false"]
start_retries = 0

[jobs.alerts]
kind = "alerts"
interval = "1s"
provider_down_for = "1s"
webhooks = [
  {{ url = "{black_hole}", timeout_s = 30, retries = 0 }},
  {{ url = "{receiver.url}" }},
]
"""
    )
    wait_for_sync(lambda: receiver.got("provider_down:broken", "firing"), 30, what="the alert")
    alert = next(b for b in receiver.bodies if b["alert"]["key"] == "provider_down:broken")
    assert (
        alert["alert"]["severity"] == "error"
        and "helixctl logs broken" in alert["alert"]["message"]
    )
    assert set(alert) >= {"alert", "host", "helixd"}
    shown = h.ctl("alerts")
    assert shown.returncode == 0 and "provider_down:broken" in shown.stdout
    # Stopping the provider on purpose clears the condition; the alert resolves.
    assert h.ctl("stop", "broken").returncode == 0
    wait_for_sync(lambda: receiver.got("provider_down:broken", "resolved"), 30, what="resolve")


def test_rotations_load_and_unload_the_sets_they_name(helix: Any, tmp_path: Path) -> None:
    jobs = """
[jobs.day]
kind = "rotation"
cron = "0 8 * * *"
load = ["a"]
unload = ["b", "c"]
pin = true

[jobs.night]
kind = "rotation"
cron = "0 20 * * *"
load = ["b"]
unload = ["a", "c"]
pin = true
"""
    models_toml = (
        model_toml(tmp_path, "a")
        + model_toml(tmp_path, "b")
        + model_toml(tmp_path, "c", "pinned = true")
    )
    h = helix(llama_config(tmp_path, models_toml, jobs))
    wait_for_sync(lambda: states(h)["c"] == "loaded", 30, what="pinned c to load")
    day = h.ctl("run", "day")
    assert day.returncode == 0, day.stdout + day.stderr
    assert "kept c" in day.stdout  # pinned in the config: a rotation never unloads it
    now = models(h)
    assert now["a"]["state"] == "loaded" and now["a"]["pinned"]
    assert now["b"]["state"] == "unloaded"
    night = h.ctl("--json", "run", "night")
    run = json.loads(night.stdout)["run"]
    assert run["result"] == "ok" and run["details"]["models"]["a"]["result"] == "unloaded"
    now = models(h)
    assert now["b"]["state"] == "loaded" and now["b"]["pinned"]
    assert now["a"]["state"] == "unloaded" and not now["a"]["pinned"]
    assert now["c"]["state"] == "loaded"


def test_jobs_and_run_errors_are_clear(helix: Any) -> None:
    h = helix("")
    listing = json.loads(h.ctl("--json", "jobs").stdout)["jobs"]
    assert [j["name"] for j in listing] == ["alerts", "backup", "cleanup", "health", "update"]
    update = next(j for j in listing if j["name"] == "update")
    assert update["enabled"] is False and update["next_run"] is None
    assert "off (run on demand)" in h.ctl("jobs").stdout
    missing = h.ctl("run", "nope")
    assert missing.returncode == 1
    assert "no job named 'nope'; jobs: alerts, backup, cleanup, health, update" in missing.stderr
    cleanup = h.ctl("run", "cleanup")
    assert cleanup.returncode == 0 and "cleanup: ok" in cleanup.stdout and "freed" in cleanup.stdout
    update_run = h.ctl("run", "update")  # no provider has update commands: nothing to do
    assert update_run.returncode == 0, update_run.stdout + update_run.stderr
    status = h.status()
    assert status["jobs"]["count"] == 5 and "alerts" in status


def test_backup_restore_gives_back_the_old_config_and_refuses_hostile_archives(
    helix: Any, tmp_path: Path
) -> None:
    import tarfile

    extra = tmp_path / "Modelfiles"
    extra.mkdir()
    (extra / "coder.Modelfile").write_text("FROM qwen2.5-coder:7b\n")
    jobs = (
        '[jobs.backup]\nkind = "backup"\ncron = "0 3 * * *"\n'
        f'keep_daily = 2\nkeep_weekly = 0\npaths = ["{extra}"]\n'
    )
    h = helix(jobs)
    original = h.config.read_bytes()
    created = h.ctl("--json", "backup", "create")
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["backup"]["id"]
    backups = h.state_dir / "backups"
    assert (backups / f"{backup_id}.tar.gz").stat().st_mode & 0o777 == 0o600

    # Change the config (a provider more) and the Modelfile; reload.
    h.write_config(jobs + '\n[providers.demo]\nkind = "echo"\n')
    (extra / "coder.Modelfile").write_text("FROM something-else\n")
    assert h.ctl("reload").returncode == 0
    assert [p["name"] for p in h.status()["providers"]] == ["demo"]

    restored = h.ctl("backup", "restore", backup_id)
    assert restored.returncode == 0, restored.stderr
    assert "config reloaded" in restored.stdout and "pre-restore" in restored.stdout
    assert h.config.read_bytes() == original
    assert (extra / "coder.Modelfile").read_text() == "FROM qwen2.5-coder:7b\n"
    assert h.status()["providers"] == []  # the restored config is the running one
    listing = json.loads(h.ctl("--json", "backup", "list").stdout)["backups"]
    assert [b["label"] for b in listing] == ["pre-restore", "manual"]

    # Hostile archives: refused with the reason; nothing changes.
    def plant(name: str, members: dict[str, bytes]) -> None:
        with tarfile.open(backups / f"{name}.tar.gz", "w:gz") as tar:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    manifest = json.dumps(
        {"format": 1, "roots": {"config": str(h.config), "state": str(h.state_dir)}, "files": 1}
    ).encode()
    plant("helixd-20200101T000000Z", {"manifest.json": manifest, "../../escape": b"x"})
    plant(
        "helixd-20200102T000000Z",
        {"manifest.json": manifest, "config/helixd.toml": b'[providers.x]\nkind = "nope"\n'},
    )
    before = h.config.read_bytes()
    escape = h.ctl("backup", "restore", "helixd-20200101T000000Z")
    assert escape.returncode == 1 and "../../escape" in escape.stderr
    invalid = h.ctl("backup", "restore", "helixd-20200102T000000Z")
    assert invalid.returncode == 1 and "does not validate" in invalid.stderr
    assert "providers.x.kind" in invalid.stderr
    assert h.config.read_bytes() == before
    assert not (tmp_path / "escape").exists() and not (h.root.parent / "escape").exists()
    assert not list(h.state_dir.glob(".restore-*"))

    # Retention (keep_daily = 2, keep_weekly = 0): all of today's backups but the newest go.
    for name in ("helixd-20200101T000000Z", "helixd-20200102T000000Z"):
        (backups / f"{name}.tar.gz").unlink()
    ran = h.ctl("--json", "run", "backup")
    run = json.loads(ran.stdout)["run"]
    assert run["result"] == "ok" and run["details"]["kept"] == 1
    assert len(json.loads(h.ctl("--json", "backup", "list").stdout)["backups"]) == 1


def test_an_update_that_breaks_the_provider_is_rolled_back_through_helixctl(
    helix: Any, tmp_path: Path
) -> None:
    from tests.fakes.versioned_server import read_version_argv, write_version_argv

    version_file = tmp_path / "version"
    version_file.write_text("1.0\n")

    def toml_list(argv: list[str]) -> str:
        return json.dumps(argv)

    h = helix(
        f"""
[providers.server]
kind = "openai"
command = ["{{python}}", "{FAKES / "versioned_server.py"}", "--version-file", "{version_file}",
           "--port", "{{port}}"]
health = {{ path = "/", interval_s = 1 }}
start_retries = 0

[providers.server.update]
version = {toml_list(read_version_argv(version_file))}
command = {toml_list(write_version_argv(version_file, "broken-2.0"))}
rollback = {toml_list(write_version_argv(version_file, "1.0"))}
"""
    )
    h.wait_state("server", "ready")
    ran = h.ctl("run", "update")  # the built-in update job: off on schedule, runs on demand
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "rolled back" in ran.stdout and "broken-2.0" in ran.stdout
    assert h.wait_state("server", "ready")["state"] == "ready"
    assert version_file.read_text().strip() == "1.0"
    (alert,) = [a for a in alerts(h)["active"] if a["key"] == "update_failed:server"]
    assert alert["severity"] == "error"
