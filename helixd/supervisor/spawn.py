"""Low-level process handling: spawn in a new session, watch for exit, signal whole groups.

Children are started with ``subprocess.Popen`` from the event-loop thread and watched
through a pidfd, so exit is noticed the moment it happens and no asyncio child watcher
(or its threads) is involved. ``PR_SET_PDEATHSIG`` makes each child die with helixd,
even when helixd is SIGKILLed; grandchildren are caught through the process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import grp
import os
import pwd
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from helixd.errors import SupervisionError
from helixd.supervisor.spec import ProcessSpec

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class SpawnError(SupervisionError):
    """The process could not be started at all (missing binary, bad cwd, bad user)."""

    code = "spawn_failed"


def child_setup(parent_pid: int) -> Callable[[], None]:
    """``preexec_fn`` for every child: it dies with helixd (PR_SET_PDEATHSIG)."""

    def setup() -> None:
        # Runs in the child between fork and exec: only async-signal-safe work here.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # helixd died before prctl took effect
            os._exit(1)
        # Restore default signal dispositions the daemon may have changed.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    return setup


def why_not_started(exc: Exception, command: str, cwd: Path | None, env: dict[str, str]) -> str:
    """What a failed exec means for the user: a missing command, cwd, or permission."""
    if isinstance(exc, FileNotFoundError):
        missing = exc.filename or command
        if cwd is not None and str(missing) == str(cwd):
            return f"working directory {cwd} does not exist"
        return (
            f"command not found: {command!r} (is it installed and on PATH? "
            f"PATH={env.get('PATH', '')!r})"
        )
    if isinstance(exc, PermissionError):
        return f"permission denied running {command!r}: {exc.strerror}"
    return f"cannot start {command!r}: {exc}"


@dataclass
class Child:
    """A running child: its Popen, pid/pgid, and the fds of its stdout/stderr pipes."""

    popen: subprocess.Popen[bytes]
    pid: int
    pgid: int
    create_time: float


def ensure_port_free(host: str, port: int) -> None:
    """Raise :class:`SpawnError` naming the holder when something already listens on ``port``.

    Some servers silently move to another port when theirs is taken; helixd would then
    probe (and later route to) the wrong process. Checking first gives a clear reason.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
    try:
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise SpawnError(f"cannot use port {port}: {exc.strerror}") from None
        holder = _port_holder(port)
        raise SpawnError(
            f"port {port} is already in use{holder}; stop that process or give this provider "
            "another port (or port = 'auto')"
        ) from None
    finally:
        probe.close()


def _port_holder(port: int) -> str:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.pid
            if listening and conn.laddr and conn.laddr.port == port:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def spawn(spec: ProcessSpec) -> Child:
    """Start ``spec`` in its own session; raise :class:`SpawnError` with a readable reason."""
    if spec.port is not None and spec.health.kind != "none":
        ensure_port_free(spec.host, spec.port)
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:
        if spec.user:
            kwargs["user"] = spec.user
            try:
                entry = pwd.getpwnam(spec.user)
            except KeyError:
                raise SpawnError(
                    f"providers.{spec.name}.user: no such user {spec.user!r}"
                ) from None
            kwargs["group"] = entry.pw_gid
            kwargs["extra_groups"] = os.getgrouplist(spec.user, entry.pw_gid)
        if spec.group:
            try:
                kwargs["group"] = grp.getgrnam(spec.group).gr_gid
            except KeyError:
                raise SpawnError(
                    f"providers.{spec.name}.group: no such group {spec.group!r}"
                ) from None
    try:
        popen = subprocess.Popen(
            list(spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(spec.env),
            cwd=spec.cwd,
            start_new_session=True,
            preexec_fn=child_setup(os.getpid()),
            close_fds=True,
            **kwargs,  # type: ignore[call-overload]
        )
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SpawnError(why_not_started(exc, spec.argv[0], spec.cwd, dict(spec.env))) from None
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.Error:
        create_time = 0.0
    return Child(popen=popen, pid=popen.pid, pgid=popen.pid, create_time=create_time)


async def wait_exit(child: Child) -> int:
    """Wait for ``child`` to exit and reap it; return Popen's returncode (-N = signal N)."""
    if child.popen.returncode is not None:
        # Already reaped: the pid may belong to someone else by now.
        return child.popen.returncode
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(child.pid)
    except ProcessLookupError:
        return child.popen.wait()
    except OSError:
        # No pidfd (kernel < 5.3, or a seccomp sandbox): poll instead.
        while child.popen.poll() is None:
            await asyncio.sleep(0.05)
        return child.popen.wait()
    exited = loop.create_future()
    loop.add_reader(pidfd, _resolve, exited)
    try:
        if child.popen.poll() is None:
            await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return child.popen.wait()


def has_ended(child: Child) -> bool:
    """Whether ``child`` has ended, reaped or not; it stays a zombie for Popen to reap."""
    if child.popen.returncode is not None:
        return True
    try:
        # WNOWAIT: look without reaping, so wait_exit still gets its returncode.
        return os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # no longer a child of ours to wait for: it has been reaped


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member changed user; it still exists
    return True


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes whose process group is ``pgid``. Blocking: use a thread."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of ``pid``, including ones that left its process group."""
    try:
        found: list[psutil.Process] = psutil.Process(pid).children(recursive=True)
        return found
    except psutil.Error:
        return []


def kill_all(processes: list[psutil.Process], sig: int) -> None:
    """Signal each process that is still the same process (psutil checks pid reuse)."""
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def alive(proc: psutil.Process) -> bool:
    """Whether a psutil process still runs (not a zombie, not gone, not a reused pid)."""
    try:
        return bool(proc.is_running()) and proc.status() != "zombie"
    except Exception:
        return False
