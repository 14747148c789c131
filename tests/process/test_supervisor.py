"""The supervisor against real child processes: crashes, hangs, stubborn groups, logs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from helixd.supervisor.process import ManagedProcess, ProcessState
from helixd.supervisor.registry import ChildRegistry
from helixd.supervisor.spec import free_port
from tests.conftest import child_argv, make_spec, wait_for

_CREATED: list[ManagedProcess] = []


@pytest.fixture(autouse=True)
async def _stop_what_a_test_started() -> AsyncIterator[None]:
    # A failing assertion must not leave children (and their groups) running.
    yield
    while _CREATED:
        await _CREATED.pop().stop()


def _process(tmp_path: Path, **provider: object) -> ManagedProcess:
    spec = make_spec(tmp_path, **provider)
    process = ManagedProcess(spec, ChildRegistry(tmp_path / "state"))
    _CREATED.append(process)
    return process


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _read_pids(pidfile: Path) -> list[int]:
    return [int(p) for p in pidfile.read_text().split()]


async def test_sigkilled_provider_comes_back_ready_with_restart_counted(tmp_path: Path) -> None:
    port = free_port()
    proc = _process(
        tmp_path,
        command=child_argv("--port", "{port}"),
        port=port,
        health={"path": "/health", "interval_s": 0.1, "failures": 2},
    )
    await proc.start()
    try:
        assert await proc.wait_settled(15) == ProcessState.READY
        first_pid = proc.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        await wait_for(
            lambda: proc.restarts == 1 and proc.state == ProcessState.READY, what="restart to ready"
        )
        assert proc.pid != first_pid
        assert proc.last_exit is not None and proc.last_exit.signal == signal.SIGKILL
    finally:
        await proc.stop()
    assert proc.state == ProcessState.STOPPED


async def test_provider_that_exits_at_every_start_ends_failed_with_log_tail(tmp_path: Path) -> None:
    proc = _process(tmp_path, command=child_argv("--exit-code", "3"), start_retries=2)
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.FAILED
    info = proc.info()
    assert "3 failed starts" in info["message"]
    assert info["last_exit"]["code"] == 3
    assert any("exiting with 3" in line for line in info["log_tail"])
    assert proc.restarts == 2


async def test_stop_kills_a_group_that_ignores_sigterm_and_forks(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    proc = _process(
        tmp_path,
        command=child_argv("--ignore-term", "--grandchild", "--pidfile", str(pidfile)),
        health={"enabled": False},
        stop_timeout_s=0.5,
    )
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.READY
    await wait_for(lambda: pidfile.exists() and len(_read_pids(pidfile)) == 2, what="pidfile")
    pids = _read_pids(pidfile)
    await proc.stop()
    assert proc.state == ProcessState.STOPPED
    assert _pids_alive(pids) == []
    assert any("SIGKILL" in line.text for line in proc.sink.tail(20))


async def test_stop_also_kills_a_grandchild_that_left_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    proc = _process(
        tmp_path,
        command=child_argv("--grandchild-setsid", "--pidfile", str(pidfile)),
        health={"enabled": False},
        stop_timeout_s=0.5,
    )
    await proc.start()
    await wait_for(lambda: pidfile.exists() and len(_read_pids(pidfile)) == 2, what="pidfile")
    pids = _read_pids(pidfile)
    await proc.stop()
    assert _pids_alive(pids) == []


async def test_failing_health_checks_mark_unhealthy_then_restart(tmp_path: Path) -> None:
    flag = tmp_path / "sick"
    port = free_port()
    proc = _process(
        tmp_path,
        command=child_argv("--port", "{port}", "--unhealthy-if", str(flag)),
        port=port,
        health={"path": "/", "interval_s": 0.1, "failures": 3},
    )
    states: list[str] = []
    proc._on_change = lambda p: states.append(str(p.state))
    await proc.start()
    try:
        assert await proc.wait_settled(15) == ProcessState.READY
        flag.touch()
        await wait_for(lambda: proc.restarts >= 1, what="restart after failed health checks")
        assert "unhealthy" in states
        assert proc.last_exit is not None and proc.last_exit.reason == "unhealthy"
        flag.unlink()
        await wait_for(lambda: proc.state == ProcessState.READY, what="ready again")
    finally:
        await proc.stop()


async def test_start_timeout_counts_as_failed_start(tmp_path: Path) -> None:
    # Listens nowhere, so the HTTP probe never passes.
    proc = _process(
        tmp_path, command=child_argv(), health={"path": "/"}, start_seconds=0.3, start_retries=1
    )
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.FAILED
    assert proc.last_exit is not None and proc.last_exit.reason == "start-timeout"
    assert "2 failed starts" in proc.message


async def test_missing_binary_fails_with_a_readable_reason(tmp_path: Path) -> None:
    proc = _process(tmp_path, command=["/nonexistent/llama-server"], start_retries=0)
    await proc.start()
    assert await proc.wait_settled(5) == ProcessState.FAILED
    assert "command not found: '/nonexistent/llama-server'" in proc.message


async def test_clean_exit_with_on_failure_policy_stops(tmp_path: Path) -> None:
    proc = _process(
        tmp_path,
        command=child_argv("--exit-code", "0"),
        health={"enabled": False},
        restart="on-failure",
    )
    await proc.start()
    # A clean exit is not a failure: on-failure leaves it stopped, and says why.
    assert await proc.wait_settled(15) == ProcessState.STOPPED
    assert proc.message == "exited with code 0"
    assert proc.restarts == 0


async def test_output_goes_to_ring_and_log_file_with_stream_tags(tmp_path: Path) -> None:
    proc = _process(tmp_path, command=child_argv("--lines", "3"), health={"enabled": False})
    await proc.start()
    try:
        await wait_for(
            lambda: any(line.text == "line 2" for line in proc.sink.tail(50)), what="output"
        )
        streams = {line.stream for line in proc.sink.tail(50)}
        assert {"stdout", "stderr", "helixd"} <= streams
        text = proc.spec.log_path.read_text()
        assert "line 2\n" in text and "[stderr] child" in text
    finally:
        await proc.stop()


async def test_child_environment_is_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("SECRET_TOKEN", "leak")
    proc = _process(
        tmp_path,
        command=child_argv(
            "--env", "NOTIFY_SOCKET", "--env", "SECRET_TOKEN", "--env", "MINE", "--env", "PATH"
        ),
        env={"MINE": "yes"},
        health={"enabled": False},
    )
    await proc.start()
    try:
        await wait_for(
            lambda: any("env PATH=" in line.text for line in proc.sink.tail(50)), what="env"
        )
        lines = {line.text for line in proc.sink.tail(50)}
        assert "env NOTIFY_SOCKET=<unset>" in lines
        assert "env SECRET_TOKEN=<unset>" in lines
        assert "env MINE=yes" in lines
        assert f"env PATH={os.environ['PATH']}" in lines
    finally:
        await proc.stop()


async def test_registry_cleans_up_what_a_dead_supervisor_left(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    registry = ChildRegistry(tmp_path / "state")
    proc = ManagedProcess(
        make_spec(
            tmp_path,
            command=child_argv("--grandchild", "--pidfile", str(pidfile)),
            health={"enabled": False},
        ),
        registry,
    )
    await proc.start()
    await wait_for(lambda: pidfile.exists() and len(_read_pids(pidfile)) == 2, what="pidfile")
    pids = _read_pids(pidfile)
    # Simulate a supervisor that vanished: its record stays, its children run on.
    assert proc._task is not None
    proc._task.cancel()
    cleaned = ChildRegistry(tmp_path / "state").clean_up_leftovers(grace_s=2)
    assert cleaned and cleaned[0].startswith("p (")
    await wait_for(lambda: _pids_alive(pids) == [], what="leftovers gone")


async def test_a_taken_port_is_reported_with_its_holder(tmp_path: Path) -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        proc = _process(
            tmp_path,
            command=child_argv("--port", "{port}"),
            port=port,
            start_retries=0,
            health={"path": "/"},
        )
        await proc.start()
        assert await proc.wait_settled(10) == ProcessState.FAILED
        assert f"port {port} is already in use by pid {os.getpid()}" in proc.message
    finally:
        holder.close()


async def test_a_garbage_answer_fails_the_probe_instead_of_crashing(tmp_path: Path) -> None:
    import asyncio

    from helixd.supervisor.health import probe
    from helixd.supervisor.spec import HealthProbe

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 " + b"9" * 100_000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await probe(HealthProbe("http", "/", 1, 2, 1), "127.0.0.1", port)
    assert not result.ok and "unreadable answer" in result.detail


async def test_cleanup_spares_a_group_whose_id_was_reused(tmp_path: Path) -> None:
    import json
    import subprocess

    from helixd.supervisor.registry import boot_id

    # An unrelated session that happens to have the recorded group id.
    stranger = subprocess.Popen(
        ["sh", "-c", "sleep 60 & wait"], start_new_session=True, stdin=subprocess.DEVNULL
    )
    try:
        await wait_for(lambda: len(psutil.Process(stranger.pid).children()) == 1, what="fork")
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / "children.json").write_text(
            json.dumps(
                {
                    "boot_id": boot_id(),
                    "children": {
                        "old": {"pid": stranger.pid, "pgid": stranger.pid, "create_time": 1000.0}
                    },
                }
            )
        )
        assert ChildRegistry(tmp_path / "state").clean_up_leftovers(grace_s=1) == []
        assert stranger.poll() is None
        assert len(psutil.Process(stranger.pid).children()) == 1
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait()


async def test_stop_ends_a_run_loop_that_swallows_a_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defence in depth for the CI hang: whatever the run loop awaits may absorb one
    # CancelledError (Python 3.11's wait_for did); stop must still end the loop and the child.
    from helixd.supervisor import health
    from helixd.supervisor import process as process_module

    real_probe = health.probe
    probing = asyncio.Event()

    async def probe_swallowing_one_cancel(*args: object) -> health.ProbeResult:
        probing.set()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, as 3.11's wait_for did
            await asyncio.Event().wait()  # never passes on its own
        monkeypatch.setattr(process_module.health, "probe", real_probe)
        return health.ProbeResult(False, "swallowed a cancel")

    monkeypatch.setattr(process_module.health, "probe", probe_swallowing_one_cancel)
    port = free_port()
    proc = _process(tmp_path, command=child_argv("--port", "{port}"), port=port)
    await proc.start()
    await asyncio.wait_for(probing.wait(), 15)
    child_pid = proc.pid
    assert child_pid is not None
    stop = asyncio.create_task(proc.stop())
    done, _ = await asyncio.wait({stop}, timeout=15)
    assert stop in done, "stop() hung on a run loop that swallowed its cancellation"
    assert proc.state == ProcessState.STOPPED
    assert _pids_alive([child_pid]) == []


# -- waits report the outcome of the start they asked for ------------------------------


def _fails_until(flag: Path, *then: str) -> list[str]:
    """A command that prints and exits 3 until ``flag`` exists, then runs ``then``."""
    script = f'if [ -e "{flag}" ]; then exec "$0" "$@"; fi; echo "not fixed yet"; exit 3'
    return ["sh", "-c", script, *then]


async def test_start_from_failed_waits_for_its_own_outcome(tmp_path: Path) -> None:
    # The README's recovery step: fix the cause of a `failed`, then `start --wait`. The
    # wait must not settle on the old failure still showing when the new start begins.
    flag = tmp_path / "fixed"
    proc = _process(
        tmp_path,
        command=_fails_until(flag, *child_argv("--port", "{port}")),
        port=free_port(),
        start_retries=0,
        health={"path": "/", "interval_s": 0.1},
    )
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.FAILED
    flag.touch()
    generation = await proc.start()
    assert await proc.wait_settled(15) == ProcessState.READY  # the latest start by default
    assert proc._state_generation >= generation
    # A restart from ready waits for the new run, not the ready one it replaces.
    flag.unlink()
    generation = await proc.restart()
    assert await proc.wait_settled(15, generation) == ProcessState.FAILED
    assert "not fixed yet" in proc.info()["log_tail"]


async def test_start_from_failed_reports_the_new_failure_not_the_old(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    script = (
        f'n=$(cat "{counter}" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "{counter}"; '
        'echo "attempt $n"; exit 3'
    )
    proc = _process(tmp_path, command=["sh", "-c", script], start_retries=0)
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.FAILED
    assert "attempt 1" in proc.info()["log_tail"]
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.FAILED
    assert "attempt 2" in proc.info()["log_tail"]


# -- what a start that never gets ready says -----------------------------------------


def _static_server(root: Path) -> list[str]:
    """An HTTP server that answers 404 for every path but the files under ``root``."""
    root.mkdir(exist_ok=True)
    return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root)]


async def test_a_health_path_answering_404_says_so_and_how_to_fix_it(tmp_path: Path) -> None:
    proc = _process(
        tmp_path,
        command=[*_static_server(tmp_path / "www"), "{port}"],
        port=free_port(),
        health={"path": "/health"},
        start_seconds=1.5,
        start_retries=0,
    )
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.FAILED
    message = proc.message
    # Connections refused until it listens are normal; what it answered then is the news.
    assert "did not become ready within start_seconds: GET /health answered HTTP 404 " in message
    assert re.search(r"404 on (every probe \(\d+ probes\)|the last \d+ of \d+ probes)", message)
    assert 'this server has no /health; set health = { path = "/v1/models" }' in message
    assert proc.last_exit is not None and proc.last_exit.reason == "start-timeout"
    assert any(
        "not ready after 1.5 s: GET /health answered HTTP 404" in line.text
        for line in proc.sink.tail(50)
    )


async def test_llamacpp_kind_falls_back_to_v1_models_when_health_is_404(tmp_path: Path) -> None:
    # llama-cpp-python's server has no /health; both it and llama-server answer /v1/models.
    www = tmp_path / "www"
    (www / "v1").mkdir(parents=True)
    (www / "v1" / "models").write_text('{"data": []}')
    proc = _process(
        tmp_path,
        kind="llamacpp",
        command=[*_static_server(www), "{port}"],
        port=free_port(),
        health={"interval_s": 0.1},
        start_retries=0,
    )
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.READY
    notes = [line.text for line in proc.sink.tail(50) if line.stream == "helixd"]
    assert any("answered HTTP 404" in n and "probing GET /v1/models instead" in n for n in notes)

    # The ready-state probes use the fallback too (http.server logs each request).
    def probes_of_models() -> int:
        return sum('"GET /v1/models HTTP' in line.text for line in proc.sink.tail(200))

    await wait_for(lambda: probes_of_models() >= 3, what="two probes while ready")
    assert proc.state == ProcessState.READY and proc.health_failures == 0


async def test_a_provider_that_sets_its_health_path_gets_no_fallback(tmp_path: Path) -> None:
    www = tmp_path / "www"
    (www / "v1").mkdir(parents=True)
    (www / "v1" / "models").write_text("{}")
    proc = _process(
        tmp_path,
        kind="llamacpp",
        command=[*_static_server(www), "{port}"],
        port=free_port(),
        health={"path": "/health"},  # meant: a 404 there is an error, not a hint
        start_seconds=1,
        start_retries=0,
    )
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.FAILED
    assert "GET /health answered HTTP 404 on " in proc.message
    assert not any("GET /v1/models" in line.text for line in proc.sink.tail(100))


async def test_a_server_that_never_listens_is_reported_as_refused(tmp_path: Path) -> None:
    port = free_port()
    proc = _process(
        tmp_path,
        command=child_argv(),  # listens nowhere
        port=port,
        health={"path": "/"},
        start_seconds=0.5,
        start_retries=1,
    )
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.FAILED
    assert proc.message.startswith("gave up after 2 failed starts (start_retries = 1); the last")
    assert f"connection refused on 127.0.0.1:{port} on every probe (" in proc.message
    assert f"is it listening on port {port}? Its command must use {{port}}" in proc.message


# -- notes that say what happened ------------------------------------------------------


async def test_a_model_process_note_quotes_the_configured_start_retries(tmp_path: Path) -> None:
    from helixd.config import ProviderConfig
    from helixd.providers.base import LoadError, ModelTarget
    from helixd.providers.per_model import ProcessPerModelAdapter
    from tests.conftest import test_paths

    config = ProviderConfig.model_validate(
        {
            "kind": "openai",
            "command": child_argv("--exit-code", "3", "--env", "{model}"),
            "start_retries": 1,
        }
    )
    adapter = ProcessPerModelAdapter(
        "llama", config, test_paths(tmp_path), ChildRegistry(tmp_path / "state")
    )
    target = ModelTarget("m", "m", None, None, 0, (), None, 0.9)
    with pytest.raises(LoadError, match="llama:m exited with code 3 while loading"):
        await adapter.load(target)
    process = adapter.last_process["m"]
    notes = [line.text for line in process.sink.tail(50) if line.stream == "helixd"]
    failed = next(n for n in notes if n.startswith("failed: "))
    assert "start_retries = 0" not in failed
    assert failed == (
        "failed: exited with code 3 while starting; a model's server is started once per "
        "load, never restarted by the supervisor (providers.llama.start_retries = 1 and "
        'restart = "on-failure" do not apply); helixctl load m starts it again'
    )


async def test_a_process_killed_from_outside_is_never_stopped_on_request(tmp_path: Path) -> None:
    # As the scheduler does for a model's process: when it stops serving, stop it at once.
    # The stop meets a process that had already died: its note must say how it died.
    proc = _process(
        tmp_path,
        command=child_argv("--port", "{port}"),
        port=free_port(),
        restart="never",
        health={"path": "/", "interval_s": 0.1},
    )
    stops: list[asyncio.Task[None]] = []

    def on_change(p: ManagedProcess) -> None:
        if p.state == ProcessState.STOPPING and not stops:
            stops.append(asyncio.create_task(p.stop()))

    proc._on_change = on_change
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.READY
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    await wait_for(lambda: bool(stops) and stops[0].done(), what="the stop after the kill")
    assert proc.state == ProcessState.STOPPED
    notes = [line.text for line in proc.sink.tail(50) if line.stream == "helixd"]
    assert not any("stopped on request" in n for n in notes), notes
    assert notes[-1].startswith("stopped: killed by SIGKILL, not by helixd (a kill from outside")
    assert proc.last_exit is not None
    assert proc.last_exit.signal == signal.SIGKILL and proc.last_exit.reason == "exited"
    assert proc.info()["last_exit"]["description"].startswith("killed by SIGKILL, not by helixd")


async def test_a_stop_that_needed_sigkill_says_so(tmp_path: Path) -> None:
    proc = _process(
        tmp_path, command=child_argv("--ignore-term"), health={"enabled": False}, stop_timeout_s=0.3
    )
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.READY
    await proc.stop()
    assert proc.message == (
        "stopped on request: still running 0.3 s after SIGTERM (stop_timeout_s), "
        "so killed by SIGKILL"
    )
    assert proc.last_exit is not None and proc.last_exit.signal == signal.SIGKILL
    assert proc.last_exit.reason == "stopped"


async def test_a_plain_stop_is_stopped_on_request(tmp_path: Path) -> None:
    proc = _process(tmp_path, command=child_argv(), health={"enabled": False})
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.READY
    await proc.stop()
    assert proc.message == "stopped on request"
    assert proc.last_exit is not None and proc.last_exit.signal == signal.SIGTERM


async def test_a_server_with_neither_probe_path_says_what_was_tried(tmp_path: Path) -> None:
    proc = _process(
        tmp_path,
        kind="llamacpp",
        command=[*_static_server(tmp_path / "www"), "{port}"],
        port=free_port(),
        health={"interval_s": 0.1},
        start_seconds=1,
        start_retries=0,
    )
    await proc.start()
    assert await proc.wait_settled(15) == ProcessState.FAILED
    assert "GET /v1/models answered HTTP 404 on the last " in proc.message
    assert "(before that: GET /health answered HTTP 404)" in proc.message
    assert "this server has no /v1/models; set health.path to one it answers" in proc.message
