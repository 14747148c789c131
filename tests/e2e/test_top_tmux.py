"""``helixctl top`` against a real helixd: the full screen in an 80x24 tmux pane, and
``--once`` and its refusals as plain commands.

The tmux tests run their own tmux server (``tmux -L`` with a name of their own and no
user config), so they never touch a tmux the person running them uses, and kill it at
teardown. Without tmux they are skipped, or fail where the run demands real parts
(``make test``, which installs it).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helixctl.context import EXIT_UNREACHABLE
from tests.conftest import wait_for_sync
from tests.e2e.conftest import BIN

HELIXCTL = str(BIN / "helixctl")
TMUX = shutil.which("tmux")
WIDTH, HEIGHT = 80, 24
MODEL_HEADING = ["MODEL", "STATE", "DEVICE", "MEM", "IN/Q", "REQ/M", "KEEP", "EVICT"]

# No proxies: the environment may point urllib at one, and helixd is local.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Host RAM only (no GPU needed), and the echo server started per model.
CONFIG = """
[resources]
gpus = "none"

[providers.echo]
kind = "openai"
command = ["{python}", "-m", "helixd.providers.echo", "--host", "{host}", "--port", "{port}",
           "--model", "{model}"]
health = { path = "/health", interval_s = 0.2 }
start_seconds = 30
stop_timeout_s = 3

[models.tiny]
provider = "echo"
ram_mib = 64

[models.coder]
provider = "echo"
ram_mib = 128
"""


def chat(h: Any, model: str) -> int:
    """A chat completion through helixd's endpoint; its HTTP status."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        h.proxy_url + "/v1/chat/completions", body.encode(), {"Content-Type": "application/json"}
    )
    with OPENER.open(request, timeout=60) as response:
        status: int = response.status
        response.read()
        return status


def row(lines: list[str], first_cell: str) -> list[str] | None:
    """The cells of the line whose first cell is ``first_cell``; None if there is none."""
    found = [line.split() for line in lines if line.split()[:1] == [first_cell]]
    assert len(found) <= 1, (first_cell, lines)
    return found[0] if found else None


def request_rows(lines: list[str], model: str) -> list[list[str]]:
    """The requests section's rows for ``model``."""
    heading = next((i for i, line in enumerate(lines) if line.startswith("TIME ")), None)
    if heading is None:
        return []
    rows = []
    for line in lines[heading + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        if len(cells) > 1 and cells[1] == model:
            rows.append(cells)
    return rows


def no_traceback(text: str) -> bool:
    return "Traceback" not in text and "Error" not in text


def env_of(h: Any, **more: str) -> dict[str, str]:
    # A tmux the tests run under must not take these as its own.
    env = {k: v for k, v in h.env.items() if k not in ("TMUX", "TMUX_PANE")}
    return env | {"LANG": "C.UTF-8"} | more


# -- the full screen, in tmux -----------------------------------------------------------


class Pane:
    """``helixctl top`` in the one pane of a detached tmux session on a server of its own."""

    def __init__(self, root: Path) -> None:
        assert TMUX is not None
        self.server = f"helixctl-top-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.root = root
        self.conf = root / "tmux.conf"
        # No status line: the pane is the whole 80x24. A terminal type every terminfo has.
        self.conf.write_text(
            "set -g status off\nset -g default-terminal screen\nset -g default-shell /bin/sh\n"
        )
        self.rc = root / "top.rc"
        self.err = root / "top.stderr"
        self.socket: Path | None = None  # the tmux server's, once it runs

    def tmux(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert TMUX is not None
        return subprocess.run(
            [TMUX, "-L", self.server, "-f", str(self.conf), *args],
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=30,
        )

    def start(self, socket: Path, env: dict[str, str], *args: str) -> None:
        """Run ``helixctl top ARGS``; its exit status goes to :attr:`rc`, stderr to :attr:`err`."""
        command = (
            f"{shlex.join([HELIXCTL, 'top', *args])} 2>{shlex.quote(str(self.err))}; "
            f"echo $? >{shlex.quote(str(self.rc))}"
        )
        size = ("-x", str(WIDTH), "-y", str(HEIGHT))
        result = self.tmux(
            "new-session",
            "-d",
            "-s",
            "top",
            *size,
            "-e",
            f"HELIXD_SOCKET={socket}",
            command,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        self.socket = Path(self.tmux("display-message", "-p", "#{socket_path}").stdout.strip())

    def lines(self) -> list[str]:
        """The pane's lines as shown now; none once it has closed."""
        result = self.tmux("capture-pane", "-p", "-t", "top")
        return result.stdout.split("\n")[:HEIGHT] if result.returncode == 0 else []

    def size(self) -> str:
        return self.tmux(
            "display-message", "-p", "-t", "top", "#{pane_width}x#{pane_height}"
        ).stdout

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "top").returncode == 0

    def until(
        self, wanted: Callable[[list[str]], bool], what: str, timeout: float = 20
    ) -> list[str]:
        """The pane's lines once ``wanted`` accepts them; the test fails after ``timeout``."""
        seen: list[list[str]] = [[]]

        def check() -> bool:
            seen[0] = self.lines()
            return wanted(seen[0])

        try:
            wait_for_sync(check, timeout, what)
        except BaseException:
            print("the pane showed:\n" + "\n".join(seen[0]))
            print("helixctl top's stderr:\n" + self.stderr())
            raise
        return seen[0]

    def exit_code(self, timeout: float = 20) -> int:
        """``helixctl top``'s exit status, once it has exited."""
        wait_for_sync(
            lambda: self.rc.exists() and self.rc.read_text().endswith("\n"),
            timeout,
            "helixctl top to exit",
        )
        return int(self.rc.read_text())

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def kill(self) -> None:
        """Stop this server (a no-op when it ended with its session) and remove its socket."""
        if self.socket is not None:
            self.tmux("kill-server")
            if self.socket.name == self.server:  # never anything but our own
                self.socket.unlink(missing_ok=True)


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    if TMUX is None:
        why = "tmux is not installed (make test installs it): the full screen needs a terminal"
        if os.environ.get("HELIXD_TEST_REAL_PROVIDERS") == "1":
            pytest.fail(why)  # the run demands real parts: a quiet skip would hide the gap
        pytest.skip(why)
    made = Pane(tmp_path)
    try:
        yield made
    finally:
        made.kill()


def footer(lines: list[str]) -> str:
    return lines[HEIGHT - 1] if len(lines) >= HEIGHT else ""


def test_top_follows_a_load_and_a_request_live_and_q_quits(helix: Any, pane: Pane) -> None:
    h = helix(CONFIG)
    pane.start(h.socket, env_of(h))
    first = pane.until(
        lambda ls: footer(ls) == "q quit   connected" and row(ls, "coder") is not None,
        "the first frame",
    )
    assert pane.size().strip() == f"{WIDTH}x{HEIGHT}"
    # The header: the daemon, how long it has been up, the clock; then its summary.
    assert first[0].startswith("helixd ") and "   up " in first[0]
    assert first[1] == "1 provider: 1 per model; models: 2 unloaded"
    assert any(line.startswith("ram [") and line.endswith(" GiB") for line in first)
    assert "no GPU in use: RAM-only mode" in "\n".join(first)
    assert row(first, "MODEL") == MODEL_HEADING
    assert row(first, "tiny") == ["tiny", "unloaded", "-", "64M", "0/0", "0", "-", "-"]
    assert row(first, "coder") == ["coder", "unloaded", "-", "128M", "0/0", "0", "-", "-"]
    assert row(first, "echo") == ["echo", "openai", "per", "model", "-", "0", "-"]
    assert not any(line.startswith("TIME ") for line in first)  # no request yet
    assert all(len(line) <= WIDTH for line in first)

    # A load by another command shows without restarting top.
    assert h.ctl("load", "tiny").returncode == 0
    loaded = pane.until(lambda ls: (row(ls, "tiny") or [""])[1:2] == ["loaded"], "tiny loaded")
    tiny = row(loaded, "tiny")
    assert tiny is not None and tiny[2] == "ram" and tiny[-1] == "#1"  # first to be evicted

    # A request through the endpoint shows in the requests section.
    assert chat(h, "tiny") == 200
    shown = pane.until(lambda ls: bool(request_rows(ls, "tiny")), "the request in top")
    assert row(shown, "TIME") == ["TIME", "MODEL", "STATUS", "MS", "TTFT", "TRIES", "PATH"]
    [request] = request_rows(shown, "tiny")
    assert request[2] == "200" and request[-1] == "/v1/chat/completions"
    assert all(len(line) <= WIDTH for line in shown)

    pane.tmux("send-keys", "-t", "top", "q")
    assert pane.exit_code() == 0
    wait_for_sync(lambda: not pane.alive(), 20, "the pane to close")
    assert pane.stderr() == ""


def test_top_says_when_helixd_goes_away_and_follows_it_back(helix: Any, pane: Pane) -> None:
    h = helix(CONFIG)
    assert h.ctl("load", "tiny").returncode == 0
    pane.start(h.socket, env_of(h))
    pane.until(lambda ls: (row(ls, "tiny") or [""])[1:2] == ["loaded"], "tiny loaded")
    assert h.stop() == 0
    gone = pane.until(lambda ls: footer(ls).startswith("q quit   disconnected"), "disconnected")
    # The last picture stays, marked as such, and top goes on trying.
    assert "(showing " in footer(gone) and "; retrying: " in footer(gone)
    assert (row(gone, "tiny") or [""])[1] == "loaded"
    h.start()
    back = pane.until(
        lambda ls: (
            footer(ls) == "q quit   connected" and (row(ls, "tiny") or [""])[1:2] == ["unloaded"]
        ),
        "top to follow the new helixd",
        timeout=30,
    )
    assert row(back, "MODEL") == MODEL_HEADING
    assert pane.alive()
    pane.tmux("send-keys", "-t", "top", "q")
    assert pane.exit_code() == 0
    assert pane.stderr() == ""


def test_top_in_a_terminal_with_helixd_down_says_so_and_exits(helix: Any, pane: Pane) -> None:
    h = helix(CONFIG, start=False)
    pane.start(h.socket, env_of(h))
    assert pane.exit_code() == EXIT_UNREACHABLE
    error = pane.stderr()
    assert error.startswith("helixctl: helixd is not running: no control socket at "), error
    assert str(h.socket) in error and no_traceback(error)


# -- one frame, and the refusals ----------------------------------------------------------


def top(h: Any, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HELIXCTL, *args],
        env=env_of(h, **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_once_prints_one_frame_as_wide_as_asked(helix: Any) -> None:
    h = helix(CONFIG)
    assert h.ctl("load", "tiny").returncode == 0
    assert chat(h, "tiny") == 200
    result = top(h, "top", "--once", COLUMNS=str(WIDTH))
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.rstrip("\n").split("\n")
    assert all(len(line) <= WIDTH for line in lines), lines
    assert lines[0].startswith("helixd ") and "   up " in lines[0]
    assert lines[1] == "1 provider: 1 per model; models: 1 loaded, 1 unloaded"
    assert row(lines, "MODEL") == MODEL_HEADING
    assert (row(lines, "tiny") or [""])[1:3] == ["loaded", "ram"]
    assert (row(lines, "coder") or [""])[1] == "unloaded"
    # Requests a snapshot already holds show in the one frame too.
    [request] = request_rows(lines, "tiny")
    assert request[2] == "200"
    # To a pipe it is the whole picture, blank lines between sections included; LINES cuts
    # it to a screenful, lower sections giving way first.
    assert "" in lines
    short = top(h, "top", "--once", COLUMNS="60", LINES="8").stdout.rstrip("\n").split("\n")
    assert len(short) <= 8 and all(len(line) <= 60 for line in short)
    assert short[0].startswith("helixd ")
    assert not any(line.startswith("TIME ") for line in short)


def test_once_json_is_the_live_document(helix: Any) -> None:
    h = helix(CONFIG)
    result = top(h, "top", "--once", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [m["name"] for m in document["models"]] == ["tiny", "coder"]
    assert document["devices"]["mode"] == "ram-only"
    assert {"version", "host", "time", "providers", "requests", "alerts"} <= set(document)
    assert json.loads(top(h, "--json", "top", "--once").stdout)["models"] == document["models"]


def test_top_without_a_terminal_says_to_use_once(helix: Any) -> None:
    h = helix(CONFIG, start=False)  # refused before helixd is asked anything
    result = top(h, "top")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "helixctl: helixctl top needs a terminal; use --once for one frame\n"
    json_screen = top(h, "--json", "top")
    assert json_screen.returncode == 2
    assert "--json goes with --once" in json_screen.stderr and no_traceback(json_screen.stderr)


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_once_with_helixd_down_exits_unreachable(helix: Any, json_flag: list[str]) -> None:
    h = helix(CONFIG, start=False)
    result = top(h, *json_flag, "top", "--once")
    assert result.returncode == EXIT_UNREACHABLE
    assert result.stdout == ""
    assert result.stderr.startswith("helixctl: helixd is not running: no control socket at ")
    assert no_traceback(result.stderr)
