"""``--json`` before or after the command, as the README writes it, for real commands."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.test_proxy import echo_models


def test_json_goes_before_or_after_the_command(helix: Any) -> None:
    h = helix(echo_models("m"))
    assert h.ctl("load", "m", "--json").returncode == 0
    for args in (
        ["status"],
        ["models"],
        ["jobs"],
        ["alerts"],
        ["backup", "list"],
        ["config", "check", str(h.config)],
        ["logs", "m"],
    ):
        after = h.ctl(*args, "--json")
        assert after.returncode == 0, (args, after.stderr)
        before = h.ctl("--json", *args)
        assert before.returncode == 0, (args, before.stderr)
        assert type(json.loads(after.stdout)) is type(json.loads(before.stdout)), args
    # An error answers in JSON too, with the same exit code.
    unknown = h.ctl("load", "nope", "--json")
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)["error"]["code"]
    assert h.ctl("status", "--json", "--socket", "/x").returncode == 2  # --socket is global


def test_start_or_stop_of_a_per_model_provider_says_what_it_is(helix: Any) -> None:
    """``helixctl stop echo`` on a per-model provider: not "no provider named 'echo'"."""
    h = helix(echo_models("m", "n"))
    for action in ("start", "stop", "restart"):
        result = h.ctl(action, "echo")
        assert result.returncode == 1, result
        assert result.stderr.strip() == (
            "helixctl: 'echo' is a per-model provider: it has no process of its own, one per "
            "loaded model; use helixctl load/unload MODEL (m, n)"
        )
    assert "no provider named 'nope'" in h.ctl("stop", "nope").stderr
