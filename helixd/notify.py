"""A small sd_notify client: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

sd_notify is one datagram to the AF_UNIX socket named by ``NOTIFY_SOCKET`` (``@`` means
the abstract namespace). Without that variable every call is a no-op, so the daemon runs
the same under systemd and in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("helixd.notify")

# Variables systemd hands to the service that must not leak into provider processes.
SYSTEMD_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


class Notifier:
    """Sends sd_notify messages; consumes the systemd variables from the environment."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval_s = _watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._last_status: str | None = None
        if environ is None:
            # Children get a clean environment anyway; removing these also keeps any
            # library that looks at them from talking to systemd on our behalf.
            for key in SYSTEMD_ENV:
                os.environ.pop(key, None)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with Type=notify."""
        return self.address is not None

    def send(self, *fields: str) -> None:
        """Send ``KEY=VALUE`` fields in one datagram; failures are logged, never raised."""
        if self.address is None:
            return
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto("\n".join(fields).encode(), address)
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.address, exc)

    def ready(self, status: str | None = None) -> None:
        """The service is up (control socket listening, autostart processes spawned)."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(f"STATUS={status}")
            self._last_status = status
        self.send(*fields)

    def status(self, status: str) -> None:
        """Update the one-line status shown by ``systemctl status``, only when it changed."""
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def reloading(self) -> None:
        """A reload began; systemd needs the monotonic time to order it against READY=1."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Shutdown began."""
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """Keep-alive ping; sent from an event-loop task so a stalled loop stops the pings."""
        self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the datagram socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` (systemd's advice), if the watchdog is for this process."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None
