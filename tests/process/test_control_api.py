"""The control API in-process, on a real Unix socket, for what the CLI cannot observe."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from helixd.control import api
from helixd.control.sockets import bind_control_socket
from helixd.supervisor.arbiter import Supervisor
from helixd.supervisor.process import ManagedProcess
from helixd.supervisor.registry import ChildRegistry
from tests.conftest import child_argv, make_spec, wait_for


class Backend:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.stopping = False

    def status(self) -> dict[str, Any]:
        return {}

    async def refresh(self) -> None:
        pass

    async def reload(self) -> dict[str, Any]:
        return {}

    def operator_stopped(self, name: str, stopped: bool) -> None:
        pass

    def log_source(self, name: str) -> ManagedProcess:
        return self.supervisor.get(name)


async def test_an_abandoned_log_follower_is_dropped_without_new_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "FOLLOW_CHECK_S", 0.05)
    supervisor = Supervisor(ChildRegistry(tmp_path / "state"))
    process = supervisor.add(make_spec(tmp_path, "quiet", command=child_argv()))
    runner = web.AppRunner(api.ControlAPI(Backend(supervisor)).app())
    await runner.setup()
    sock = bind_control_socket(tmp_path / "c.sock", 0o600, None)
    await web.SockSite(runner, sock).start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "c.sock"))
        writer.write(b"GET /v1/providers/quiet/logs?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        await wait_for(lambda: len(process.sink._followers) == 1, what="follower registered")
        writer.close()
        # Nothing is logged from here on: only the periodic check can notice the client left.
        await wait_for(lambda: len(process.sink._followers) == 0, 10, "follower dropped")
    finally:
        await runner.cleanup()
