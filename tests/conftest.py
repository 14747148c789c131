"""Shared test helpers: config/spec builders and deadline-bounded polling."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from helixd.config import DaemonPaths, ProviderConfig
from helixd.supervisor.spec import ProcessSpec, build_spec

CHILD = str(Path(__file__).parent / "fixtures" / "child.py")


def child_argv(*args: str) -> list[str]:
    """Command line of the test child program."""
    return [sys.executable, CHILD, *args]


def test_paths(tmp_path: Path) -> DaemonPaths:
    """Daemon paths inside a test's temporary directory (user mode)."""
    return DaemonPaths(
        mode="user",
        socket=tmp_path / "helixd.sock",
        socket_mode=0o600,
        socket_group=None,
        state_dir=tmp_path / "state",
        log_dir=tmp_path / "logs",
    )


def make_spec(tmp_path: Path, name: str = "p", **provider: Any) -> ProcessSpec:
    """A spec for a test provider; fast timings unless the test says otherwise."""
    values: dict[str, Any] = {
        "kind": "openai",
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "stop_timeout_s": 2,
        "start_seconds": 10,
        "health": {"interval_s": 0.1, "timeout_s": 1, "failures": 2},
    }
    values.update(provider)
    return build_spec(name, ProviderConfig.model_validate(values), test_paths(tmp_path))


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0, what: str = ""
) -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


def wait_for_sync(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Blocking variant of :func:`wait_for` for tests that drive subprocesses."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.02)


def import_real_provider(module: str) -> Any:
    """Import a real provider's package, or skip — unless the run demands real providers.

    ``make test`` (and so CI) sets ``HELIXD_TEST_REAL_PROVIDERS=1``: there a missing
    llama-cpp-python is a failure, never a quiet skip.
    """
    import importlib
    import os

    if os.environ.get("HELIXD_TEST_REAL_PROVIDERS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed")
