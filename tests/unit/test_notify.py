"""sd_notify over a real AF_UNIX datagram socket."""

from __future__ import annotations

import socket
from pathlib import Path

from helixd.notify import Notifier


def test_messages_arrive_as_datagrams(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify"))
    server.settimeout(2)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    notifier.ready("1 provider: 1 ready")
    assert server.recv(4096) == b"READY=1\nSTATUS=1 provider: 1 ready"
    notifier.status("1 provider: 1 ready")  # unchanged: nothing sent
    notifier.status("1 provider: 1 backoff")
    assert server.recv(4096) == b"STATUS=1 provider: 1 backoff"
    notifier.reloading()
    fields = server.recv(4096).decode().split("\n")
    assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=")
    notifier.stopping()
    assert server.recv(4096) == b"STOPPING=1"
    notifier.close()
    server.close()


def test_abstract_socket_address() -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0helixd-test-notify")
    server.settimeout(2)
    Notifier({"NOTIFY_SOCKET": "@helixd-test-notify"}).watchdog()
    assert server.recv(4096) == b"WATCHDOG=1"
    server.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert Notifier({"WATCHDOG_USEC": "10000000"}).watchdog_interval_s == 5.0
    assert Notifier({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({}).watchdog_interval_s is None


def test_without_notify_socket_nothing_happens() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")  # must not raise
