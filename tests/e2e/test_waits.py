"""Waits report the outcome of what they asked for: ``start --wait`` and ``load`` after a
failure, through the real daemon and the real helixctl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import CHILD
from tests.e2e.views import models


def fails_until(flag: Path) -> str:
    """A TOML argv prefix: print and exit 3 until ``flag`` exists, then run the rest."""
    script = f'if [ -e "{flag}" ]; then exec "$0" "$@"; fi; echo "not fixed yet"; exit 3'
    return f'"sh", "-c", {json.dumps(script)}'


def counting_failure(counter: Path) -> str:
    """A TOML argv prefix: print which attempt this is, and exit 3."""
    script = (
        f'n=$(cat "{counter}" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "{counter}"; '
        'echo "attempt $n"; exit 3'
    )
    return f'"sh", "-c", {json.dumps(script)}'


def test_start_wait_on_a_failed_provider_waits_for_the_new_start(
    helix: Any, tmp_path: Path
) -> None:
    # The README's recovery step for a `failed` provider: fix the cause, then
    # `helixctl start NAME --wait`. It must report this start's outcome, not the old one.
    flag = tmp_path / "fixed"
    h = helix(
        f"""
[providers.p]
kind = "openai"
command = [{fails_until(flag)}, "{{python}}", "{CHILD}", "--port", "{{port}}"]
start_retries = 0
backoff_initial_s = 0.05
health = {{ path = "/", interval_s = 1 }}
"""
    )
    failed = h.wait_state("p", "failed")
    assert "not fixed yet" in failed["log_tail"]
    flag.touch()
    result = h.ctl("start", "p", "--wait", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert h.provider("p")["state"] == "ready"
    # And a failure again is this start's failure, told with this start's log lines.
    flag.unlink()
    result = h.ctl("restart", "p", "--wait", "--timeout", "60")
    assert result.returncode == 1
    assert "p failed: gave up after 1 failed start (start_retries = 0)" in result.stderr
    assert "exited with code 3 while starting" in result.stderr


def test_start_wait_reports_the_new_failure_with_its_own_log_lines(
    helix: Any, tmp_path: Path
) -> None:
    counter = tmp_path / "count"
    h = helix(
        f"""
[providers.p]
kind = "openai"
command = [{counting_failure(counter)}]
start_retries = 0
"""
    )
    h.wait_state("p", "failed")
    result = h.ctl("start", "p", "--wait", "--timeout", "60")
    assert result.returncode == 1
    assert "attempt 2" in result.stderr, result.stderr
    assert "attempt 1" not in result.stderr  # the log lines are this start's own
    assert counter.read_text().strip() == "2"


def test_load_of_a_failed_model_reports_the_new_attempt(helix: Any, tmp_path: Path) -> None:
    # `helixctl load MODEL` on a failed model retries at once (README) and tells the
    # outcome of that retry: its own log lines, and success once the cause is fixed.
    counter, flag = tmp_path / "count", tmp_path / "fixed"
    script = (
        f'n=$(cat "{counter}" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "{counter}"; '
        f'if [ -e "{flag}" ]; then exec "$0" "$@"; fi; echo "attempt $n"; exit 3'
    )
    h = helix(
        f"""
[resources]
gpus = "none"

[providers.m]
kind = "openai"
command = ["sh", "-c", {json.dumps(script)}, "{{python}}", "-m", "helixd.providers.echo",
           "--host", "{{host}}", "--port", "{{port}}", "--model", "{{model}}"]
health = {{ path = "/health", interval_s = 1 }}
start_retries = 2

[models.a]
provider = "m"
ram_mib = 64
"""
    )
    first = h.ctl("load", "a", timeout=90)
    assert first.returncode == 1
    assert "attempt 1" in first.stderr
    assert models(h)["a"]["state"] == "failed"
    second = h.ctl("load", "a", timeout=90)
    assert second.returncode == 1
    assert "attempt 2" in second.stderr, second.stderr
    # The model's own log says why it was not retried, quoting the configured figure.
    logs = h.ctl("logs", "a").stdout
    assert "(providers.m.start_retries = 2 and restart = " in logs
    assert "start_retries = 0" not in logs
    flag.touch()
    third = h.ctl("load", "a", timeout=90)
    assert third.returncode == 0, third.stderr
    assert models(h)["a"]["state"] == "loaded"
