"""``helixctl init`` on a host with an Ollama and a GGUF file: a config that checks and runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helixd.supervisor.spec import free_port
from tests.conftest import import_real_provider, wait_for_sync
from tests.e2e.conftest import BIN
from tests.e2e.gpu_host import FAKES, REPO


@pytest.fixture
def host_with_ollama(tmp_path: Path) -> Any:
    """A running (fake) Ollama with two models, an ``ollama`` on PATH, a GGUF file."""
    library = tmp_path / "library.json"
    library.write_text(json.dumps({"qwen2.5:7b": {"mib": 300}, "team/odd:1b": {"mib": 100}}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "ollama"  # 'ollama serve' → the fake, on the same model library
    shim.write_text(
        f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" "{FAKES / "ollama_server.py"}" '
        f'--library "{library}"\n'
    )
    shim.chmod(0o755)
    # A llama-server on PATH (never run here): llama-cpp-python in helixd's own venv is a
    # test dependency, which init must not report as the user's.
    server = bin_dir / "llama-server"
    server.write_text("#!/bin/sh\nexit 1\n")
    server.chmod(0o755)
    models = tmp_path / "models"
    models.mkdir()
    import_real_provider("gguf")
    from tests.fakes.tiny_gguf import write_tiny_llama

    write_tiny_llama(models / "Tiny-Chat.Q8_0.gguf")
    port = free_port()
    env = dict(os.environ, OLLAMA_HOST=f"127.0.0.1:{port}", PATH=f"{bin_dir}:{os.environ['PATH']}")
    running = subprocess.Popen([str(shim), "serve"], env=env, stderr=subprocess.PIPE)
    assert running.stderr is not None
    assert b"Listening on" in running.stderr.readline()
    yield env, models
    running.terminate()
    running.wait(10)


def helixctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "helixctl"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_init_writes_a_config_that_checks_and_starts(
    helix: Any, host_with_ollama: Any, tmp_path: Path
) -> None:
    env, models = host_with_ollama
    target = tmp_path / "helixd.toml"
    init = helixctl(env, "init", "--output", str(target), "--models-dir", str(models))
    assert init.returncode == 0, init.stderr
    assert "found:" in init.stdout and "(qwen2.5:7b, team/odd:1b)" in init.stdout
    assert "Tiny-Chat.Q8_0.gguf" in init.stdout
    assert "to do:" in init.stdout and "stop the Ollama already running" in init.stdout
    text = target.read_text()
    assert "# Installed in Ollama: team/odd:1b." in text
    again = helixctl(env, "init", "--output", str(target))
    assert again.returncode == 1 and "already exists; pass --force" in again.stderr
    check = helixctl(env, "config", "check", str(target))
    assert check.returncode == 0, check.stderr
    assert "models: " in check.stdout and "team-odd:1b" in check.stdout
    assert "tiny-chat.q8_0" in check.stdout
    # It starts, and its Ollama model loads through helixd's own 'ollama serve'.
    h = helix(text, extra_env={"PATH": env["PATH"]})
    wait_for_sync(lambda: h.provider("ollama")["state"] == "ready", 30, what="ollama ready")
    loaded = h.ctl("load", "team-odd:1b", timeout=60)
    assert loaded.returncode == 0, loaded.stderr
