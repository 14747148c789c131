"""The real daemon in a temp dir, driven through the real helixctl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helixd.supervisor.spec import free_port
from tests.conftest import wait_for_sync

BIN = Path(sys.executable).parent


class Helix:
    """One helixd process plus helpers to call helixctl against it."""

    def __init__(self, root: Path, config_text: str, proxy: str = "") -> None:
        self.root = root
        self.config = root / "helixd.toml"
        self.socket = root / "helixd.sock"
        self.state_dir = root / "state"
        self.proxy_lines = proxy  # more [proxy] keys, e.g. api_keys
        self.proxy_port = free_port()
        self.proxy_url = f"http://127.0.0.1:{self.proxy_port}"
        self.config.write_text(self.header() + config_text)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = root / "helixd.stderr"
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))
        }
        self.env["HELIXD_SOCKET"] = str(self.socket)

    def header(self) -> str:
        return (
            f'[daemon]\nsocket = "{self.root}/helixd.sock"\nstate_dir = "{self.root}/state"\n'
            f'log_dir = "{self.root}/logs"\nlog_level = "debug"\n\n'
            f'[proxy]\nlisten = "127.0.0.1:{self.proxy_port}"\n{self.proxy_lines}\n\n'
        )

    def write_config(self, text: str) -> None:
        self.config.write_text(self.header() + text)

    def start(
        self,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """Start helixd (``prefix``: a command that execs it, e.g. ``prlimit ... --``)."""
        env = dict(self.env, **(extra_env or {}))
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [*prefix, str(BIN / "helixd"), "--user", "--config", str(self.config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        if wait:
            wait_for_sync(
                lambda: self.ctl("status").returncode == 0 or self._died(), what="helixd to answer"
            )
            assert not self._died(), self.stderr()

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "helixctl"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self) -> dict[str, Any]:
        result = self.ctl("--json", "status")
        assert result.returncode == 0, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def provider(self, name: str) -> dict[str, Any]:
        return next(p for p in self.status()["providers"] if p["name"] == name)

    def wait_state(self, name: str, state: str, timeout: float = 20) -> dict[str, Any]:
        wait_for_sync(
            lambda: self.provider(name)["state"] == state, timeout, what=f"{name} to be {state}"
        )
        return self.provider(name)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        return code


@pytest.fixture
def helix(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``helix(config_text)`` → a started :class:`Helix`; stopped at teardown."""
    started: list[Helix] = []

    def make(config_text: str, start: bool = True, proxy: str = "", **kwargs: Any) -> Helix:
        root = tmp_path / f"h{len(started)}"
        root.mkdir()
        instance = Helix(root, config_text, proxy)
        started.append(instance)
        if start:
            instance.start(**kwargs)
        return instance

    yield make
    for instance in started:
        if instance.proc is not None and instance.proc.poll() is None:
            instance.stop()
