"""helixd as a user meets it: started, queried, broken, reloaded, killed, restarted."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import CHILD, wait_for_sync

ECHO = '[providers.echo]\nkind = "echo"\nhealth = { interval_s = 0.2 }\n'


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _child_provider(name: str, *args: str, **keys: str) -> str:
    argv = json.dumps([sys.executable, CHILD, *args])
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return (
        f'[providers.{name}]\nkind = "openai"\ncommand = {argv}\n'
        f"health = {{ enabled = false }}\nstop_timeout_s = 1\nbackoff_initial_s = 0.05\n{extra}"
    )


def test_echo_provider_becomes_ready_and_status_shows_it(helix: Any) -> None:
    h = helix(ECHO)
    info = h.wait_state("echo", "ready")
    assert info["pid"] and info["port"]
    human = h.ctl("status")
    assert human.returncode == 0
    assert "1 provider: 1 ready" in human.stdout
    assert any(line.split()[:3] == ["echo", "echo", "ready"] for line in human.stdout.splitlines())
    # The provider really serves on its port.
    with socket.create_connection(("127.0.0.1", info["port"]), timeout=5) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 200")


def test_sigkill_to_helixd_leaves_no_provider_and_a_new_one_starts_cleanly(
    helix: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    h = helix(ECHO + _child_provider("forker", "--grandchild", "--pidfile", str(pidfile)))
    echo_pid = h.wait_state("echo", "ready")["pid"]
    h.wait_state("forker", "ready")
    wait_for_sync(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2)
    child_pid, grandchild_pid = map(int, pidfile.read_text().split())
    h.stop(signal.SIGKILL)
    # Direct children die with helixd (PDEATHSIG) ...
    wait_for_sync(lambda: not _alive(echo_pid) and not _alive(child_pid), what="children gone")
    # ... the grandchild is caught by the next helixd, from the record of process groups.
    assert h.socket.exists(), "a SIGKILLed helixd leaves its socket behind"
    h.start()
    wait_for_sync(lambda: not _alive(grandchild_pid), what="the next helixd to clean up")
    assert "earlier helixd" in h.stderr()
    assert h.wait_state("echo", "ready")["pid"] != echo_pid


def test_a_second_daemon_on_the_same_socket_refuses_to_start(helix: Any) -> None:
    h = helix(ECHO)
    second = subprocess.run(
        [str(Path(sys.executable).parent / "helixd"), "--user", "--config", str(h.config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=h.env,
    )
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert "Traceback" not in second.stderr
    assert h.ctl("status").returncode == 0  # the first one is untouched


def test_reload_with_a_broken_config_is_refused_and_names_the_key(helix: Any) -> None:
    h = helix(ECHO)
    pid = h.wait_state("echo", "ready")["pid"]
    h.write_config(ECHO.replace('kind = "echo"', 'kind = "echo"\nrestart = "allways"'))
    result = h.ctl("reload")
    assert result.returncode == 1
    assert "providers.echo.restart: expected one of always, on-failure, never; got 'allways'" in (
        result.stderr
    )
    assert h.provider("echo")["pid"] == pid and h.provider("echo")["state"] == "ready"
    as_json = h.ctl("--json", "reload")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["error"]["code"] == "invalid_config"


def test_reload_that_changes_one_env_restarts_that_provider_alone(helix: Any) -> None:
    config = ECHO + _child_provider("other", env='{ A = "1" }')
    h = helix(config)
    echo_pid = h.wait_state("echo", "ready")["pid"]
    other_pid = h.wait_state("other", "ready")["pid"]
    h.write_config(config.replace('A = "1"', 'A = "2"'))
    result = h.ctl("--json", "reload")
    assert result.returncode == 0, result.stderr
    changes = json.loads(result.stdout)["changes"]
    assert changes["restarted"] == ["other"] and changes["unchanged"] == ["echo"]
    assert h.wait_state("other", "ready")["pid"] != other_pid
    assert h.provider("echo")["pid"] == echo_pid


def test_reload_adds_and_removes_providers(helix: Any) -> None:
    h = helix(ECHO + _child_provider("old"))
    old_pid = h.wait_state("old", "ready")["pid"]
    h.write_config(ECHO + _child_provider("new"))
    result = h.ctl("reload")
    assert result.returncode == 0, result.stderr
    assert "started new" in result.stdout and "stopped old" in result.stdout
    h.wait_state("new", "ready")
    assert not _alive(old_pid)
    assert [p["name"] for p in h.status()["providers"]] == ["echo", "new"]


def test_sighup_reloads_too(helix: Any) -> None:
    h = helix(ECHO)
    h.wait_state("echo", "ready")
    h.write_config(ECHO + _child_provider("added"))
    assert h.proc is not None
    h.proc.send_signal(signal.SIGHUP)
    h.wait_state("added", "ready")


def test_sd_notify_protocol(helix: Any, tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20)
    received: list[str] = []

    def expect(prefix: str) -> str:
        while True:
            for message in received:
                for field in message.split("\n"):
                    if field.startswith(prefix):
                        received.remove(message)
                        return field
            received.append(sock.recv(4096).decode())

    h = helix(ECHO, start=False)
    h.start(extra_env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"})
    assert expect("READY=1")
    assert expect("STATUS=").startswith("STATUS=1 provider:")
    expect("WATCHDOG=1")
    expect("WATCHDOG=1")  # periodic, at half of WATCHDOG_USEC
    received.clear()
    assert h.ctl("reload").returncode == 0
    reloading = expect("RELOADING=1")
    assert reloading
    assert expect("READY=1")
    h.stop(signal.SIGTERM)
    assert expect("STOPPING=1")
    assert h.proc is not None and h.proc.returncode == 0
    sock.close()


def test_sigterm_stops_every_provider_and_exits_zero(helix: Any, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    h = helix(
        ECHO
        + _child_provider("stubborn1", "--ignore-term", "--pidfile", str(pidfile))
        + _child_provider("stubborn2", "--ignore-term", "--grandchild", "--pidfile", str(pidfile))
    )
    h.wait_state("stubborn1", "ready")
    h.wait_state("stubborn2", "ready")
    wait_for_sync(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 3)
    pids = [int(p) for p in pidfile.read_text().split()] + [h.provider("echo")["pid"]]
    assert h.stop(signal.SIGTERM) == 0
    assert [p for p in pids if _alive(p)] == []
    assert not h.socket.exists()


def test_cli_start_stop_restart_and_errors(helix: Any) -> None:
    h = helix(ECHO + _child_provider("manual", autostart="false"))
    assert h.provider("manual")["state"] == "stopped"
    started = h.ctl("start", "manual", "--wait")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("manual: ready (pid ")
    pid = h.provider("manual")["pid"]
    restarted = h.ctl("--json", "restart", "manual", "--wait")
    assert json.loads(restarted.stdout)["provider"]["pid"] != pid
    stopped = h.ctl("stop", "manual")
    assert stopped.returncode == 0 and stopped.stdout.strip() == "manual: stopped"
    unknown = h.ctl("stop", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "helixctl: no provider named 'nope'; configured: echo, manual"
    usage = h.ctl("start")
    assert usage.returncode == 2


def test_start_wait_on_a_crashing_provider_fails_with_its_last_lines(helix: Any) -> None:
    h = helix(_child_provider("crasher", "--exit-code", "7", autostart="false", start_retries="1"))
    result = h.ctl("start", "crasher", "--wait")
    assert result.returncode == 1
    assert "crasher failed" in result.stderr and "exiting with 7" in result.stderr
    assert h.provider("crasher")["state"] == "failed"


def test_logs_tail_and_follow(helix: Any) -> None:
    h = helix(_child_provider("talker", "--lines", "5"))
    h.wait_state("talker", "ready")
    wait_for_sync(lambda: "line 4" in h.ctl("logs", "talker").stdout, what="log lines")
    # stdout and stderr are separate pipes, so only the order within one stream is fixed.
    tail = h.ctl("logs", "talker", "-n", "2").stdout.splitlines()
    as_json = json.loads(h.ctl("--json", "logs", "talker", "-n", "2").stdout)
    assert len(tail) == 2 and len(as_json["lines"]) == 2
    assert [line.split(" ", 1)[1] for line in tail] == [
        ("" if line["stream"] == "stdout" else f"[{line['stream']}] ") + line["text"]
        for line in as_json["lines"]
    ]
    stdout = [
        line["text"]
        for line in json.loads(h.ctl("--json", "logs", "talker").stdout)["lines"]
        if line["stream"] == "stdout"
    ]
    assert stdout[-5:] == [f"line {i}" for i in range(5)]
    baseline = _unix_connections(h)
    follower = subprocess.Popen(
        [str(Path(sys.executable).parent / "helixctl"), "logs", "talker", "-f", "-n", "0"],
        env=h.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_sync(lambda: _unix_connections(h) > baseline, what="the follower to attach")
        assert h.ctl("restart", "talker").returncode == 0
        assert follower.stdout is not None
        seen = []
        for line in follower.stdout:
            seen.append(line)
            if "line 4" in line:
                break
        assert any("child" in line and "starting" in line for line in seen)
    finally:
        follower.terminate()
        follower.wait(10)


def _unix_connections(h: Any) -> int:
    # A follow connection shows as one more AF_UNIX socket of the daemon; its baseline
    # (listener, asyncio's self-pipe) is counted before the follower starts.
    assert h.proc is not None
    return len(psutil.Process(h.proc.pid).net_connections(kind="unix"))


def test_helixctl_without_a_daemon_exits_3_and_says_where_it_looked(tmp_path: Path) -> None:
    env = dict(os.environ, HELIXD_SOCKET=str(tmp_path / "none.sock"))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "helixctl"), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert str(tmp_path / "none.sock") in result.stderr and "helixd --user" in result.stderr


def test_helixd_with_a_broken_config_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[providers.x]\nkind = "ollma"\n')
    result = subprocess.run(
        [str(Path(sys.executable).parent / "helixd"), "--user", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "bad.toml: providers.x.kind: expected one of echo, ollama" in result.stderr
    check = subprocess.run(
        [str(Path(sys.executable).parent / "helixctl"), "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 1 and "providers.x.kind" in check.stderr


def test_socket_gets_the_configured_mode_and_group(helix: Any, tmp_path: Path) -> None:
    import grp
    import stat

    group = grp.getgrgid(os.getgid()).gr_name
    h = helix(ECHO, start=False)
    h.config.write_text(
        h.config.read_text().replace(
            "[daemon]\n", f'[daemon]\nsocket_mode = "0660"\nsocket_group = "{group}"\n'
        )
    )
    h.start()
    info = h.socket.stat()
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == grp.getgrnam(group).gr_gid


def test_status_fast_path_and_click_path_print_the_same(helix: Any) -> None:
    h = helix(ECHO)
    h.wait_state("echo", "ready")
    fast = h.ctl("--json", "status")
    slow = subprocess.run(
        [sys.executable, "-m", "helixctl.cli", "--json", "status"],
        env=h.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert fast.returncode == slow.returncode == 0
    assert _without_uptime(json.loads(fast.stdout)) == _without_uptime(json.loads(slow.stdout))
    human = subprocess.run(
        [sys.executable, "-m", "helixctl.cli", "status"],
        env=h.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Line 0 and the table rows carry uptimes; the summary and the table header do not.
    fast_lines, slow_lines = h.ctl("status").stdout.splitlines(), human.stdout.splitlines()
    assert fast_lines[1:4] == slow_lines[1:4]
    assert fast_lines[4].split()[:6] == slow_lines[4].split()[:6]


def _without_uptime(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_uptime(v) for k, v in value.items() if k != "uptime_s"}
    if isinstance(value, list):
        return [_without_uptime(v) for v in value]
    return value


def test_second_daemon_with_its_own_state_dir_but_the_same_socket_refuses(helix: Any) -> None:
    h = helix(ECHO)
    other = h.root / "other.toml"
    other.write_text(
        h.config.read_text().replace(f'state_dir = "{h.root}/state"', f'state_dir = "{h.root}/s2"')
    )
    second = subprocess.run(
        [str(Path(sys.executable).parent / "helixd"), "--user", "--config", str(other)],
        capture_output=True,
        text=True,
        timeout=30,
        env=h.env,
    )
    assert second.returncode == 1
    assert f"another helixd is already running on {h.socket}" in second.stderr
    assert "Traceback" not in second.stderr
    assert h.ctl("status").returncode == 0


def test_api_rejects_bad_timeouts_and_start_wait_reports_a_clean_exit(helix: Any) -> None:
    from helixctl.transport import Client

    h = helix(_child_provider("once", "--exit-code", "0", autostart="false"))
    client = Client(str(h.socket), [str(h.socket)])
    for bad in ("nan", "-5", "inf", "soon"):
        status, doc = client.call("POST", f"/v1/providers/once/start?wait=1&timeout={bad}")
        assert status == 400 and doc["error"]["code"] == "bad_request", bad
    result = h.ctl("start", "once", "--wait")
    assert result.returncode == 1
    assert "once stopped: exited with code 0" in result.stderr


def test_follow_requests_have_no_client_timeout(helix: Any) -> None:
    from helixctl.transport import Client

    h = helix(ECHO)
    client = Client(str(h.socket), [str(h.socket)], timeout=30)
    response = client.request("GET", "/v1/providers/echo/logs?lines=1&follow=1", timeout=None)
    try:
        assert response._sock.gettimeout() is None
    finally:
        response.close()


def test_bad_input_to_helixctl_never_shows_a_traceback(helix: Any, tmp_path: Path) -> None:
    h = helix(ECHO)
    directory = tmp_path / "a-dir"
    directory.mkdir()
    cases = [
        (["start", "echo", "--wait", "--timeout", "nan"], 2),
        (["start", "echo", "--wait", "--timeout", "-1"], 2),
        (["logs", "echo", "-n", "-1"], 2),
        (["logs", "echo", "-n", "many"], 2),
        (["start", ""], 1),
        (["start", "a/b"], 1),
        (["restart", "../v1/reload"], 1),
        (["logs", "nope"], 1),
        (["config", "check", str(tmp_path / "missing.toml")], 1),
        (["config", "check", str(directory)], 2),
        (["init", "--output", "/proc/helixd-cannot-write.toml"], 1),
        (["frobnicate"], 2),
        (["--socket", str(tmp_path / "nowhere.sock"), "status"], 3),
        (["--socket", str(tmp_path / "nowhere.sock"), "logs", "echo", "-f"], 3),
    ]
    for args, code in cases:
        result = h.ctl(*args)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.stderr.strip(), args


def test_follow_ends_cleanly_when_a_reload_replaces_the_provider(helix: Any) -> None:
    config = _child_provider("talker", env='{ A = "1" }')
    h = helix(config)
    h.wait_state("talker", "ready")
    follower = subprocess.Popen(
        [str(Path(sys.executable).parent / "helixctl"), "logs", "talker", "-f", "-n", "1"],
        env=h.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The last line comes on the follow stream itself, so once it is read the follower is
        # attached. (Counting the daemon's sockets raced with a helixctl call still closing.)
        assert follower.stdout is not None
        first = queue.Queue[str]()
        threading.Thread(target=lambda: first.put(follower.stdout.readline()), daemon=True).start()
        assert first.get(timeout=30), "the follower printed nothing"
        h.write_config(config.replace('A = "1"', 'A = "2"'))
        assert h.ctl("reload").returncode == 0
        _, stderr = follower.communicate(timeout=30)
        assert follower.returncode == 0
        assert "the log stream of talker ended" in stderr
    finally:
        follower.kill()
        follower.wait(10)


def test_an_operator_stop_survives_a_helixd_restart_until_started_again(helix: Any) -> None:
    h = helix(ECHO + _child_provider("other", env='{ A = "1" }'))
    h.wait_state("other", "ready")
    assert h.ctl("stop", "other").returncode == 0
    # A config change of a stopped provider does not bring it back either.
    h.write_config(ECHO + _child_provider("other", env='{ A = "2" }'))
    assert h.ctl("reload").returncode == 0
    assert h.provider("other")["state"] == "stopped"
    h.stop(signal.SIGKILL)
    h.start()
    h.wait_state("echo", "ready")
    other = h.provider("other")
    assert other["state"] == "stopped" and "stopped on request" in other["message"]
    assert h.ctl("start", "other", "--wait").returncode == 0
    h.stop(signal.SIGKILL)
    h.start()
    h.wait_state("other", "ready")  # started again by the operator: autostart applies
