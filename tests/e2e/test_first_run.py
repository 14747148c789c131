"""The first run as the README tells it: ``helixctl init``, helixd, then the README's curl.

The config is the one ``init`` writes on a host with nothing installed; the test only
adds where the socket, state and endpoint go (a free port instead of 11400), so every
client below talks to what a new user gets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import import_real_provider
from tests.e2e.conftest import BIN
from tests.e2e.gpu_host import REPO

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
DEMO = "echo-demo"


def readme_curls() -> list[str]:
    """The README's requests to the endpoint (``sh`` blocks), the First run's first."""
    text = (REPO / "README.md").read_text()
    assert "## First run" in text.split("localhost:11400", 1)[0], "First run comes first"
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    curls = [b for b in blocks if "curl" in b and "localhost:11400" in b]
    assert len(curls) >= 2, "the README's curls to the endpoint are gone"
    return curls


def bare_host_env(tmp_path: Path) -> dict[str, str]:
    """A home with nothing installed: no Ollama, no llama-server, no user python3 modules."""
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"  # only what the README's commands need
    bin_dir.mkdir()
    for tool in ("curl", "sh", "bash"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if found:
            (bin_dir / tool).symlink_to(found)
    return dict(
        os.environ,
        HOME=str(home),
        PATH=f"{BIN}:{bin_dir}",
        XDG_CONFIG_HOME=str(home / ".config"),
        OLLAMA_HOST="127.0.0.1:9",  # nothing answers there
    )


def test_the_readme_first_run_answers_on_the_endpoint(helix: Any, tmp_path: Path) -> None:
    env = bare_host_env(tmp_path)
    target = tmp_path / "helixd.toml"
    init = subprocess.run(
        [str(BIN / "helixctl"), "init", "--user", "--output", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    assert f"{DEMO} (the built-in demo model)" in init.stdout
    # helixd's own environment holds llama-cpp-python for the tests: not the user's.
    assert "llama.cpp server" not in init.stdout, init.stdout
    h = helix(target.read_text())

    # The README's curls, as written, with the test's port.
    first, *others = (
        curl.replace("localhost:11400", f"127.0.0.1:{h.proxy_port}") for curl in readme_curls()
    )
    answered = subprocess.run(
        ["bash", "-c", first], env=env, capture_output=True, text=True, timeout=60
    )
    assert answered.returncode == 0, answered.stderr
    document = json.loads(answered.stdout)
    assert document["choices"][0]["message"]["content"].startswith("echo:"), document
    assert document["model"] == DEMO
    for curl in others:
        answered = subprocess.run(
            ["bash", "-c", curl], env=env, capture_output=True, text=True, timeout=60
        )
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.startswith("data: {") and "echo: " in answered.stdout, curl
        assert answered.stdout.rstrip().endswith("data: [DONE]"), answered.stdout

    with OPENER.open(h.proxy_url + "/v1/models", timeout=10) as response:
        listed = [m["id"] for m in json.load(response)["data"]]
    assert DEMO in listed
    with OPENER.open(h.proxy_url + "/api/tags", timeout=10) as response:
        tagged = [m["name"] for m in json.load(response)["models"]]
    assert any(name.startswith(DEMO) for name in tagged), tagged

    openai = import_real_provider("openai")
    client = openai.OpenAI(base_url=h.proxy_url + "/v1", api_key="unused", max_retries=0)
    assert DEMO in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(
        model=DEMO, messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.choices[0].message.content.startswith("echo:")

    ollama = import_real_provider("ollama")
    ollama_client = ollama.Client(host=h.proxy_url)
    names = [m.model for m in ollama_client.list().models]
    assert any(name.startswith(DEMO) for name in names), names
    chat = ollama_client.chat(model=DEMO, messages=[{"role": "user", "content": "hello"}])
    assert chat.message.content.startswith("echo:")

    status = h.ctl("status")
    assert status.returncode == 0, status.stderr
    assert "1 provider: 1 per model; models: 1 loaded" in status.stdout, status.stdout
