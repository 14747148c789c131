"""``helixctl diagnose`` against a real helixd, a stopped one, and a broken config."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import wait_for_sync
from tests.e2e.conftest import BIN
from tests.e2e.gpu_host import FakeGpuHost

ECHO = '[providers.echo]\nkind = "echo"\nhealth = { interval_s = 0.2 }\n'
MISSING = "helixd-test-no-such-server"


def diagnose(
    h: Any, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / "helixctl"), *args],
        env=dict(h.env, **(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def by_name(stdout: str) -> dict[str, dict[str, Any]]:
    checks = json.loads(stdout)
    assert isinstance(checks, list)
    for check in checks:
        assert set(check) == {"check", "status", "message", "fix"}
    return {c["check"]: c for c in checks}


def lines_of(stdout: str, name: str) -> list[str]:
    """The line of check ``name`` and its indented continuation (the fix)."""
    lines = stdout.splitlines()
    # "problem  port 41877  127.0.0.1:…": the status takes 8 columns and a space.
    start = next(i for i, line in enumerate(lines) if line[9:].startswith(name + " "))
    end = start + 1
    while end < len(lines) and lines[end].startswith(" "):
        end += 1
    return lines[start:end]


def test_healthy_helixd_passes_and_the_socket_and_endpoint_are_ok(
    helix: Any, tmp_path: Path
) -> None:
    h = helix(ECHO)
    h.wait_state("echo", "ready")
    gpu = FakeGpuHost(tmp_path / "gpu")
    human = diagnose(h, "diagnose", env=gpu.env())
    assert human.returncode == 0, human.stdout + human.stderr
    assert human.stdout.splitlines()[-1] == "no problems found"

    result = diagnose(h, "--json", "diagnose", env=gpu.env())
    assert result.returncode == 0, result.stdout
    checks = by_name(result.stdout)
    assert checks["control socket"]["status"] == "ok"
    assert f"pid {h.proc.pid}" in checks["control socket"]["message"]
    assert checks["endpoint"]["status"] == "ok"
    assert checks["endpoint"]["message"].startswith(f"{h.proxy_url}/v1/models answers")
    assert checks["config"]["status"] == "ok"
    assert checks["config"]["message"].startswith(f"{h.config} (the running helixd's): valid")
    assert checks["provider echo"]["status"] == "ok"
    # The endpoint's port is taken — by helixd itself, which is fine.
    port = checks[f"port {h.proxy_port}"]
    assert port["status"] == "ok"
    assert port["message"].endswith(f"in use by helixd (pid {h.proc.pid})")
    # NVML through the same import helixd uses: the fake GPU is seen.
    assert checks["nvidia"]["status"] == "ok"
    assert "550.54.15" in checks["nvidia"]["message"], checks["nvidia"]
    assert checks["gpu0"]["message"].startswith("NVIDIA GeForce RTX 4090 (fake): 24.0 GiB free")


def test_stopped_helixd_missing_program_and_taken_port_are_problems_with_fixes(
    helix: Any, tmp_path: Path
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    # A program that answers --version by hanging (as a server that ignores it would).
    pidfile = tmp_path / "hang.pid"
    hang = tmp_path / "hang-server"
    hang.write_text(f'#!/bin/sh\necho $$ > "{pidfile}"\nexec sleep 60\n')
    hang.chmod(0o755)
    config = (
        ECHO.replace('kind = "echo"', f'kind = "echo"\nport = {taken}')
        + f'\n[providers.llama]\nkind = "openai"\ncommand = ["{MISSING}", "--port", "{{port}}"]\n'
        + f'\n[providers.slow]\nkind = "openai"\ncommand = ["{hang}", "--port", "{{port}}"]\n'
    )
    h = helix(config, start=False)
    try:
        result = diagnose(h, "diagnose", "--config", str(h.config))
    finally:
        holder.close()
    out = result.stdout
    assert result.returncode == 1, out + result.stderr

    missing = lines_of(out, "provider llama")
    assert missing[0].startswith("problem")
    assert f"command not found: '{MISSING}'" in missing[0]
    assert missing[1].strip() == (
        "fix: install it, or set providers.llama.command to the program's full path"
    )

    port = lines_of(out, f"port {taken}")
    me = psutil.Process()
    assert port[0].startswith("problem")
    assert (
        f"127.0.0.1:{taken} (providers.echo.port): taken by {me.name()} (pid {me.pid})" in (port[0])
    )
    assert port[1].strip() == (
        f"fix: stop {me.name()} (kill {me.pid}), or change providers.echo.port in {h.config} "
        "(or set it to 'auto')"
    )

    sock = lines_of(out, "control socket")
    assert sock[0].startswith("problem") and f"no control socket at {h.socket}" in sock[0]
    assert "fix: start it" in sock[1]
    assert lines_of(out, "endpoint")[0].startswith("problem")

    # The hanging program was asked for its version, given up on, and killed.
    slow = lines_of(out, "provider slow")[0]
    assert slow.startswith("ok") and "version unknown: --version did not finish in 3 s" in slow
    pid = int(pidfile.read_text())
    wait_for_sync(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
        what="the --version probe to be killed",
    )

    as_json = by_name(diagnose(h, "--json", "diagnose", "--config", str(h.config)).stdout)
    assert as_json["provider llama"]["status"] == "problem"
    assert as_json["control socket"]["status"] == "problem"
    assert as_json["provider echo"]["status"] == "ok"


def test_a_broken_config_is_a_problem_that_names_the_key(helix: Any) -> None:
    h = helix(ECHO.replace('kind = "echo"', 'kind = "echo"\nrestart = "allways"'), start=False)
    result = diagnose(h, "diagnose", "--config", str(h.config))
    assert result.returncode == 1
    config = lines_of(result.stdout, "config")
    assert config[0].startswith("problem") and f"{h.config} (--config) is not valid:" in config[0]
    assert (
        "helixd.toml: providers.echo.restart: expected one of always, on-failure, never; "
        "got 'allways'"
    ) in config[1]
    assert config[-1].strip() == (
        f"fix: correct the keys named above, then 'helixctl config check {h.config}'"
    )
    checks = by_name(diagnose(h, "--json", "diagnose", "--config", str(h.config)).stdout)
    assert checks["config"]["status"] == "problem"
    assert "providers.echo.restart" in checks["config"]["message"]
    assert not any(name.startswith(("provider ", "port ")) for name in checks)


def test_environment_config_is_found(helix: Any) -> None:
    h = helix(ECHO, start=False)
    result = diagnose(h, "--json", "diagnose", env={"HELIXD_CONFIG": str(h.config)})
    checks = by_name(result.stdout)
    assert checks["config"]["message"].startswith(f"{h.config} (HELIXD_CONFIG): valid")
    assert os.fspath(h.socket) in checks["control socket"]["message"]
