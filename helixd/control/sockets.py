"""Creating the control socket safely, and reading who is on the other end.

The socket is bound under a temporary name, given its mode and group, and only then
renamed into place, so no client ever sees it with looser permissions. An existing
socket is probed first: if a live helixd answers, we refuse to start; a dead one is
replaced.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import struct
from pathlib import Path

from helixd.errors import ControlError


class SocketInUse(ControlError, ValueError):
    """Another live process already serves the control socket."""

    code = "socket_in_use"


def ensure_not_serving(path: Path) -> None:
    """Raise :class:`SocketInUse` if something accepts connections on ``path``."""
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return  # stale: nobody listens; it will be replaced
    except OSError as exc:
        raise SocketInUse(f"{path}: cannot check the existing socket: {exc.strerror}") from None
    else:
        raise SocketInUse(
            f"another helixd is already running on {path}; stop it first "
            "(systemctl stop helixd, or Ctrl-C in its terminal) or give this one another "
            "[daemon] socket"
        )
    finally:
        probe.close()


def bind_control_socket(path: Path, mode: int, group: str | None) -> socket.socket:
    """Bind a listening AF_UNIX socket at ``path`` atomically, with ``mode`` and ``group``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755 if group else 0o700)
    _check_directory_owner(path.parent)
    ensure_not_serving(path)
    gid = _group_id(group) if group else None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, mode)
        if gid is not None:
            os.chown(tmp, -1, gid)
        sock.listen(128)
        os.replace(tmp, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    sock.setblocking(False)
    return sock


def _check_directory_owner(directory: Path) -> None:
    """Refuse a socket directory someone else controls: they could swap our socket.

    Matters for the /tmp fallback used when XDG_RUNTIME_DIR is unset, where another user
    could create the directory first.
    """
    for folder in (directory, directory.parent):
        info = folder.stat()
        sticky = bool(info.st_mode & 0o1000)
        if info.st_uid not in (os.geteuid(), 0) or (info.st_mode & 0o002 and not sticky):
            raise ValueError(
                f"{folder} is owned by uid {info.st_uid} or writable by others; helixd will not "
                "put its control socket there. Set XDG_RUNTIME_DIR or [daemon] socket."
            )


def _group_id(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if os.geteuid() == 0:
            raise ValueError(
                f"[daemon] socket_group: no group {group!r} on this host; create it "
                "(systemd-sysusers does with helixd's sysusers.d file) or set another group"
            ) from None
        # A user instance cannot chown to another group anyway; keep the caller's own.
        return None


def peer_uid(sock: socket.socket | None) -> int | None:
    """The uid of the process on the other end of an AF_UNIX connection (SO_PEERCRED)."""
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
