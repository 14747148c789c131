"""The update job against the real supervisor and real provider processes.

The provider is ``tests/fakes/versioned_server.py``, whose installed version is a file the
update, version and rollback commands write and read; a ``broken`` version cannot start,
as a bad release would. The Ollama refresh runs against the protocol fake of Ollama.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from helixd.config import DaemonPaths, HelixConfig, LoadedConfig, validate_config
from helixd.config.jobs import UpdateJob
from helixd.config.residency import ResourcesConfig, SchedulerConfig
from helixd.jobs import commands, update
from helixd.jobs.base import JobOutcome
from helixd.resources.monitor import ResourceMonitor
from helixd.scheduler.catalog import build_adapters, build_entries
from helixd.scheduler.core import ModelState
from helixd.scheduler.residency import Residency
from helixd.state import ResidencyRecord
from helixd.supervisor.arbiter import Supervisor
from helixd.supervisor.process import ProcessState
from helixd.supervisor.registry import ChildRegistry
from helixd.supervisor.spawn import group_members
from helixd.supervisor.spec import build_spec
from tests.conftest import test_paths as paths_under
from tests.conftest import wait_for
from tests.fakes.versioned_server import read_version_argv, write_version_argv

FAKES = Path(__file__).resolve().parents[1] / "fakes"
VERSIONED = FAKES / "versioned_server.py"


class RecordingAlerts:
    """Stands in for the AlertBook: records what the job fires and resolves."""

    def __init__(self) -> None:
        self.fired: list[dict[str, str]] = []
        self.resolved: list[tuple[str, str]] = []

    def fire(self, key: str, severity: str, message: str, *, source: str) -> None:
        self.fired.append({"key": key, "severity": severity, "message": message})

    def resolve(self, key: str, resolution: str = "") -> None:
        self.resolved.append((key, resolution))


@dataclass
class Context:
    """A JobContext of real parts (supervisor, residency) and the recording alerts."""

    paths: DaemonPaths
    supervisor: Supervisor
    residency: Residency
    config: HelixConfig
    alerts: RecordingAlerts = field(default_factory=RecordingAlerts)

    @property
    def loaded(self) -> LoadedConfig:
        return LoadedConfig(path=self.paths.state_dir / "helixd.toml", config=self.config)

    async def reload(self) -> dict[str, Any]:
        raise AssertionError("the update job never reloads")

    async def run(self, **job: Any) -> JobOutcome:
        config = UpdateJob.model_validate({"kind": "update", "cron": "0 * * * *", **job})
        return await update.run_update(self, config)  # type: ignore[arg-type]


Start = Callable[[dict[str, Any]], Awaitable[Context]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Builds a context from a config dict and starts its providers until ready."""
    contexts: list[Context] = []

    async def _start(data: dict[str, Any]) -> Context:
        config = validate_config(data, "helixd.toml")
        paths = paths_under(tmp_path)
        supervisor = Supervisor(ChildRegistry(paths.state_dir))
        for name, provider in config.providers.items():
            if not provider.is_model_template:  # as the daemon does
                supervisor.add(build_spec(name, provider, paths))
        residency = Residency(ResourcesConfig(), SchedulerConfig(), ResourceMonitor("none"))
        # The models' adapters and entries, as the daemon builds them.
        registry = ChildRegistry(paths.state_dir)
        adapters = build_adapters(config, paths, registry, supervisor.processes.get)
        record = ResidencyRecord(paths.state_dir)
        for entry in (await build_entries(config, adapters, record, gpus_present=False)).values():
            residency.add(entry)
        ctx = Context(paths, supervisor, residency, config)
        contexts.append(ctx)
        await supervisor.start_autostart()
        for process in supervisor.processes.values():
            assert await process.wait_settled(30) == ProcessState.READY, process.info()
        return ctx

    yield _start
    for ctx in contexts:
        await ctx.residency.close()
        await ctx.supervisor.stop_all()


def versioned(version_file: Path, version: str = "1.0", **update_table: Any) -> dict[str, Any]:
    """A provider running the versioned server, installed at ``version``."""
    version_file.write_text(version + "\n")
    command = [sys.executable, str(VERSIONED), "--version-file", str(version_file)]
    return {
        "kind": "openai",
        "command": [*command, "--port", "{port}"],
        "health": {"path": "/", "interval_s": 0.2, "timeout_s": 1, "failures": 2},
        "start_seconds": 10,
        "start_retries": 1,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.1,
        "stop_timeout_s": 2,
        "update": {"version": read_version_argv(version_file), **update_table},
    }


async def served_version(ctx: Context, name: str) -> str:
    spec = ctx.supervisor.get(name).spec
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.get(f"http://{spec.host}:{spec.port}/") as response,
    ):
        version: str = (await response.json())["version"]
        return version


def alive(pids: list[int]) -> list[int]:
    """The pids that still run (a zombie has ended)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


HANG = """
import os, pathlib, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
child = subprocess.Popen([sys.executable, "-c", stubborn])
pathlib.Path(sys.argv[1]).write_text(f"{os.getpid()} {child.pid}")
time.sleep(120)
"""


def hanging_argv(pidfile: Path) -> list[str]:
    """A command that ignores SIGTERM, starts a grandchild that does too, and never ends."""
    script = pidfile.with_suffix(".py")
    script.write_text(HANG)
    return [sys.executable, str(script), str(pidfile)]


async def test_an_update_to_a_good_version_restarts_it_ready_on_the_new_one(
    tmp_path: Path, start: Start
) -> None:
    vf = tmp_path / "app.version"
    ctx = await start({"providers": {"app": versioned(vf, command=write_version_argv(vf, "2.0"))}})
    old_pid = ctx.supervisor.get("app").pid

    outcome = await ctx.run(verify_s=20)

    assert outcome.ok, outcome
    assert outcome.message == "app 1.0 → 2.0"
    app = outcome.details["providers"]["app"]
    assert (app["before"], app["after"], app["result"]) == ("1.0", "2.0", "updated")
    assert "installed 2.0" in app["output_tail"]
    process = ctx.supervisor.get("app")
    assert process.state == ProcessState.READY and process.pid != old_pid
    assert await served_version(ctx, "app") == "2.0"
    assert [key for key, _ in ctx.alerts.resolved] == ["update_failed:app"]
    assert ctx.alerts.fired == []


async def test_an_update_whose_new_version_fails_its_health_check_is_rolled_back_and_the_provider_is_ready_on_the_old_one(  # noqa: E501
    tmp_path: Path, start: Start
) -> None:
    vf = tmp_path / "app.version"
    provider = versioned(
        vf, command=write_version_argv(vf, "broken-2.0"), rollback=write_version_argv(vf, "1.0")
    )
    ctx = await start({"providers": {"app": provider}})

    outcome = await ctx.run(verify_s=20)

    assert not outcome.ok
    app = outcome.details["providers"]["app"]
    assert (app["before"], app["after"], app["result"]) == ("1.0", "1.0", "rolled_back")
    assert vf.read_text().strip() == "1.0"
    assert ctx.supervisor.get("app").state == ProcessState.READY
    assert await served_version(ctx, "app") == "1.0"
    [alert] = ctx.alerts.fired
    assert (alert["key"], alert["severity"]) == ("update_failed:app", "error")
    assert "broken-2.0" in alert["message"] and "rolled back to 1.0" in alert["message"]
    assert outcome.message.startswith("app: update failed (broken-2.0 is failed after the restart")


async def test_a_failing_update_command_is_rolled_back_and_without_rollback_needs_a_hand(
    tmp_path: Path, start: Start
) -> None:
    # Two providers in one run: the first one's failure does not stop the second's update.
    app_file, bare_file = tmp_path / "app.version", tmp_path / "bare.version"
    app = versioned(
        app_file,
        command=write_version_argv(app_file, "1.5-partial", exit_code=1),
        rollback=write_version_argv(app_file, "1.0"),
    )
    bare = versioned(bare_file, command=write_version_argv(bare_file, "1.5-partial", exit_code=1))
    ctx = await start({"providers": {"app": app, "bare": bare}})
    bare_pid = ctx.supervisor.get("bare").pid

    outcome = await ctx.run(verify_s=20)

    assert not outcome.ok
    assert outcome.message.startswith("app: update failed (exit 1), rolled back to 1.0; bare:")
    results = outcome.details["providers"]
    assert results["app"]["result"] == "rolled_back"
    assert "installed 1.5-partial" in results["app"]["output_tail"]
    assert app_file.read_text().strip() == "1.0"
    assert await served_version(ctx, "app") == "1.0"
    assert results["bare"]["result"] == "failed"
    # Without a way back, helixd leaves the running server alone (the old code serves).
    bare_process = ctx.supervisor.get("bare")
    assert bare_process.state == ProcessState.READY and bare_process.pid == bare_pid
    severities = {a["key"]: a["severity"] for a in ctx.alerts.fired}
    assert severities == {"update_failed:app": "error", "update_failed:bare": "critical"}
    critical = next(a for a in ctx.alerts.fired if a["severity"] == "critical")
    assert "no rollback command" in critical["message"] and "needs a hand" in critical["message"]


async def test_an_unchanged_version_is_up_to_date_and_not_restarted(
    tmp_path: Path, start: Start
) -> None:
    vf = tmp_path / "app.version"
    ctx = await start({"providers": {"app": versioned(vf, command=write_version_argv(vf, "1.0"))}})
    pid = ctx.supervisor.get("app").pid

    outcome = await ctx.run(verify_s=20)

    assert outcome.ok and outcome.message == "app up to date (1.0)"
    assert outcome.details["providers"]["app"]["result"] == "up_to_date"
    assert ctx.supervisor.get("app").pid == pid
    assert [key for key, _ in ctx.alerts.resolved] == ["update_failed:app"]


async def test_a_failing_version_command_fails_the_update_before_anything_changes(
    tmp_path: Path, start: Start
) -> None:
    vf = tmp_path / "app.version"
    provider = versioned(vf, command=write_version_argv(vf, "2.0"))
    provider["update"]["version"] = [sys.executable, "-c", "import sys; sys.exit('no version')"]
    ctx = await start({"providers": {"app": provider}})
    pid = ctx.supervisor.get("app").pid

    outcome = await ctx.run(verify_s=20)

    assert not outcome.ok
    app = outcome.details["providers"]["app"]
    assert app["result"] == "failed"
    assert app["message"] == "version command exit 1: no version; nothing was changed"
    assert vf.read_text().strip() == "1.0"  # the update command never ran
    assert ctx.supervisor.get("app").pid == pid
    assert [(a["key"], a["severity"]) for a in ctx.alerts.fired] == [("update_failed:app", "error")]


async def test_an_update_command_that_cannot_start_changes_nothing_and_rolls_nothing_back(
    tmp_path: Path, start: Start
) -> None:
    vf = tmp_path / "app.version"
    marker = tmp_path / "rolled-back"
    provider = versioned(
        vf,
        command=["/nonexistent/update-app"],
        rollback=[sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
    )
    ctx = await start({"providers": {"app": provider}})
    pid = ctx.supervisor.get("app").pid

    outcome = await ctx.run(verify_s=20)

    app = outcome.details["providers"]["app"]
    assert not outcome.ok and app["result"] == "failed"
    assert app["message"].startswith(
        "the update could not start: command not found: '/nonexistent/update-app'"
    )
    assert app["message"].endswith("nothing was changed")
    assert not marker.exists()  # no rollback of an update that never ran
    assert ctx.supervisor.get("app").pid == pid
    assert [(a["key"], a["severity"]) for a in ctx.alerts.fired] == [("update_failed:app", "error")]


async def test_an_update_that_hangs_is_killed_with_its_group_and_rolled_back(
    tmp_path: Path, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "TERM_GRACE_S", 0.3)  # it ignores SIGTERM: SIGKILL comes next
    vf, pidfile = tmp_path / "app.version", tmp_path / "pids"
    provider = versioned(
        vf, command=hanging_argv(pidfile), rollback=write_version_argv(vf, "1.0"), timeout_s=3
    )
    ctx = await start({"providers": {"app": provider}})

    outcome = await ctx.run(verify_s=20)

    app = outcome.details["providers"]["app"]
    assert app["result"] == "rolled_back", app
    assert "timed out after 3 s, killed" in app["message"]
    pids = [int(p) for p in pidfile.read_text().split()]
    assert alive(pids) == []
    assert group_members(pids[0]) == []
    assert ctx.supervisor.get("app").state == ProcessState.READY


async def test_a_cancelled_update_leaves_no_command_running(tmp_path: Path, start: Start) -> None:
    vf, pidfile = tmp_path / "app.version", tmp_path / "pids"
    ctx = await start({"providers": {"app": versioned(vf, command=hanging_argv(pidfile))}})
    job = asyncio.create_task(ctx.run(verify_s=20))
    await wait_for(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2, what="pids")

    job.cancel()  # what the job runner does when timeout_s passes
    with pytest.raises(asyncio.CancelledError):
        await job

    pids = [int(p) for p in pidfile.read_text().split()]
    await wait_for(lambda: alive(pids) == [], what="the command and its grandchild gone")


async def test_a_process_per_model_provider_with_nothing_loaded_is_updated_with_its_env(
    tmp_path: Path, start: Start
) -> None:
    vf = tmp_path / "llama.version"
    vf.write_text("1.0\n")
    code = (
        "import os, pathlib; "
        f"pathlib.Path({str(vf)!r}).write_text('2.0'); "
        "print(os.environ['MARK'], os.getcwd())"
    )
    provider = {
        "kind": "llamacpp",
        "command": ["llama-server", "-m", "{model_path}", "--port", "{port}"],
        "env": {"MARK": "{state_dir}/mark"},
        "cwd": str(tmp_path),
        "update": {"command": [sys.executable, "-c", code], "version": read_version_argv(vf)},
    }
    ctx = await start({"providers": {"llama": provider}})
    assert "llama" not in ctx.supervisor.processes

    outcome = await ctx.run(verify_s=20)

    assert outcome.ok and outcome.message == "llama 1.0 → 2.0"
    llama = outcome.details["providers"]["llama"]
    assert "no model loaded" in llama["message"]
    assert llama["output_tail"] == [f"{ctx.paths.state_dir}/mark {tmp_path}"]


async def test_a_broken_update_of_a_process_per_model_provider_reloads_its_model_on_the_old_one(
    tmp_path: Path, start: Start
) -> None:
    vf = tmp_path / "llama.version"
    provider = versioned(
        vf, command=write_version_argv(vf, "broken-2.0"), rollback=write_version_argv(vf, "1.0")
    )
    provider["command"] += ["--model", "{model}"]  # a template: one process per model
    models = {"tiny": {"provider": "llama", "ram_mib": 1}, "idle": {"provider": "llama"}}
    ctx = await start({"providers": {"llama": provider}, "models": models})
    entry = await ctx.residency.load("tiny", timeout=30)
    assert entry.state == ModelState.LOADED
    first = entry.adapter.process_info("tiny")
    assert first is not None

    outcome = await ctx.run(verify_s=20)

    llama = outcome.details["providers"]["llama"]
    assert llama["result"] == "rolled_back", llama
    assert llama["message"].startswith("update failed (broken-2.0 did not reload tiny (")
    assert llama["message"].endswith("rolled back to 1.0")
    tiny = ctx.residency.view("tiny")
    assert tiny.state == ModelState.LOADED
    now = tiny.adapter.process_info("tiny")
    assert now is not None and now["pid"] != first["pid"]
    upstream = tiny.adapter.upstream("tiny")
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.get(f"{upstream}/") as response,
    ):
        assert await response.json() == {"version": "1.0", "model": "tiny"}
    assert ctx.residency.view("idle").state == ModelState.UNLOADED  # only loaded ones


async def test_ollama_refresh_reports_new_and_unchanged_digests_and_ollamas_error(
    tmp_path: Path, start: Start
) -> None:
    library, registry = tmp_path / "library.json", tmp_path / "registry.json"
    old, new = "a" * 64, "b" * 64
    library.write_text(json.dumps({"qwen2.5:7b": {"mib": 1, "digest": old}, "stable:1b": {}}))
    registry.write_text(
        json.dumps({"qwen2.5:7b": {"mib": 1, "digest": new, "pull_seconds": 0}, "stable:1b": {}})
    )
    fake = [str(FAKES / "ollama_server.py"), "--library", str(library), "--registry", str(registry)]
    ollama = {
        "kind": "ollama",
        "command": ["{python}", *fake],
        "start_seconds": 30,
        "stop_timeout_s": 5,
    }
    models = {
        "qwen": {"provider": "ollama", "id": "qwen2.5:7b", "refresh": True, "ram_mib": 1},
        "stable": {"provider": "ollama", "id": "stable:1b", "refresh": True},
        "ghost": {"provider": "ollama", "id": "ghost:1b", "refresh": True},
        "untouched": {"provider": "ollama", "id": "other:1b"},
    }
    ctx = await start({"providers": {"ollama": ollama}, "models": models})
    assert (await ctx.residency.load("qwen", timeout=30)).state == ModelState.LOADED

    outcome = await ctx.run()

    assert not outcome.ok  # ghost could not be pulled
    refreshed = outcome.details["models"]
    assert set(refreshed) == {"qwen", "stable", "ghost"}
    qwen = refreshed["qwen"]
    assert (qwen["before"], qwen["after"], qwen["changed"]) == (old, new, True)
    assert qwen["message"] == (
        "new version (sha256:aaaaaaaaaaaa… → sha256:bbbbbbbbbbbb…); "
        "the loaded one serves the old weights until it reloads"
    )
    assert ctx.residency.view("qwen").state == ModelState.LOADED  # not reloaded by force
    stable_digest = hashlib.sha256(b"stable:1b").hexdigest()
    assert refreshed["stable"] == {
        "before": stable_digest,
        "after": stable_digest,
        "changed": False,
        "message": "unchanged",
    }
    assert "pull model manifest: file does not exist" in refreshed["ghost"]["error"]
    assert outcome.message.startswith("qwen: new version; stable: unchanged; ghost: pull ghost:1b")
    assert json.loads(library.read_text())["qwen2.5:7b"]["digest"] == new


async def test_a_refresh_against_an_answer_that_is_not_ollamas_reports_it_per_model() -> None:
    from aiohttp import web

    from helixd.jobs.refresh import refresh_model

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"models": "not a list"})

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ctx = type("Ctx", (), {"residency": type("R", (), {"models": {}})()})()
    try:
        async with aiohttp.ClientSession() as session:
            result = await refresh_model(ctx, session, "qwen", f"http://127.0.0.1:{port}", "qwen")
    finally:
        await runner.cleanup()
    assert result == {
        "error": 'pull qwen failed: /api/tags: not Ollama\'s answer: \'{"models": "not a list"}\''
    }
