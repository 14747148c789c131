"""``helixctl diagnose``, the I/O edge for what listens: the control socket, ports, the endpoint.

Each probe is bounded by a short timeout and returns facts, never raises for what it
finds; :mod:`helixctl.diagnose_rules_net` says what they mean.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from helixctl.diagnose_probes import user_name
from helixctl.diagnose_rules import DaemonState
from helixctl.diagnose_rules_net import EndpointFacts, PortFacts, SocketFacts

if TYPE_CHECKING:
    from helixd.config import LoadedConfig

HTTP_TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 5.0
LOOPBACK = "127.0.0.1"  # where helixd puts providers (helixd.supervisor.spec.LOOPBACK)


# -- the control socket -------------------------------------------------------------------


def probe_socket(path: str, looked_at: list[str]) -> SocketFacts:
    """``GET /v1/status`` through helixctl's own transport; if that fails, why."""
    from helixctl.transport import Client, ProtocolError, Unreachable
    from helixd.protocol import Status

    client = Client(path, looked_at, timeout=SOCKET_TIMEOUT_S)
    try:
        status, document = client.call(Status.method, Status.target())
    except Unreachable as exc:
        return _why_unreachable(path, looked_at, str(exc))
    except ProtocolError as exc:
        return SocketFacts(path, tuple(looked_at), "error", error=f"{path}: {exc}")
    if status != 200 or not isinstance(document, dict):
        return SocketFacts(
            path, tuple(looked_at), "error", error=f"{path}: /v1/status answered HTTP {status}"
        )
    return SocketFacts(path, tuple(looked_at), "ok", daemon=document)


def _why_unreachable(path: str, looked_at: list[str], message: str) -> SocketFacts:
    """Connect again by hand: the errno says missing, stale, denied or something else."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(SOCKET_TIMEOUT_S)
        try:
            sock.connect(path)
        except FileNotFoundError:
            return SocketFacts(path, tuple(looked_at), "missing")
        except ConnectionRefusedError:
            return SocketFacts(path, tuple(looked_at), "stale")
        except PermissionError:
            return _denied(path, looked_at)
        except OSError:
            pass
    return SocketFacts(path, tuple(looked_at), "error", error=message)


def _denied(path: str, looked_at: list[str]) -> SocketFacts:
    import grp
    import pwd

    user = user_name(os.geteuid())
    try:
        st = os.stat(path)
    except OSError:
        try:  # the folder above is closed to us: its group is the one to join
            st = os.stat(os.path.dirname(path))
        except OSError:
            return SocketFacts(path, tuple(looked_at), "denied", user=user)
    try:
        group = grp.getgrgid(st.st_gid)
    except KeyError:
        return SocketFacts(path, tuple(looked_at), "denied", user=user)
    try:
        primary = pwd.getpwnam(user).pw_gid
    except KeyError:
        primary = -1
    return SocketFacts(
        path,
        tuple(looked_at),
        "denied",
        group=group.gr_name,
        owner=user_name(st.st_uid),
        user=user,
        in_group_now=st.st_gid in os.getgroups() or st.st_gid == os.getegid(),
        in_group_listed=user in group.gr_mem or primary == st.st_gid,
    )


# -- ports --------------------------------------------------------------------------------


def fixed_ports(loaded: LoadedConfig) -> list[tuple[str, str, int]]:
    """``(key, host, port)`` of every provider's fixed port and the endpoint's."""
    from helixd.config.proxy import split_listen

    wanted = [
        (f"providers.{name}.port", LOOPBACK, p.port)
        for name, p in loaded.config.providers.items()
        if isinstance(p.port, int) and p.kind != "remote"
    ]
    host, port = split_listen(loaded.config.proxy.listen)
    if port:  # 0: any free port, nothing to check
        wanted.append(("proxy.listen", host, port))
    return wanted


def probe_ports(
    wanted: Iterable[tuple[str, str, int]], daemon: dict[str, Any], daemon_hidden: bool
) -> list[PortFacts]:
    """Try to bind each port; for a taken one, find the listener and whether it is ours."""
    ours = _helixd_processes(daemon)
    facts = []
    for key, host, port in wanted:
        free, error = _bindable(host, port)
        if free or error:
            facts.append(PortFacts(key, host, port, free, bind_error=error))
            continue
        pid = _listener(port)
        name, looks = _process_name(pid)
        facts.append(
            PortFacts(
                key,
                host,
                port,
                False,
                holder_pid=pid,
                holder_name=name,
                holder_is_ours=pid is not None and pid in ours,
                holder_role=ours.get(pid, "") if pid is not None else "",
                holder_looks_like_helixd=looks,
                daemon_hidden=daemon_hidden,
            )
        )
    return facts


def _bindable(host: str, port: int) -> tuple[bool, str]:
    """``(True, "")`` free; ``(False, "")`` in use; ``(False, reason)`` cannot bind at all."""
    import errno

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As helixd's own listeners do: only a listener, not TIME_WAIT leftovers, blocks.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False, ""
            return False, exc.strerror or str(exc)
        except UnicodeError as exc:  # a host name the IDNA codec refuses
            return False, str(exc)
    return True, ""


def _listener(port: int) -> int | None:
    """The pid listening on ``port``, when this user may see it."""
    import psutil

    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        listening = conn.status == psutil.CONN_LISTEN and conn.laddr
        if listening and conn.laddr.port == port and conn.pid is not None:
            return int(conn.pid)
    return None


def _process_name(pid: int | None) -> tuple[str | None, bool]:
    """A process's name, and whether it looks like a helixd."""
    import psutil

    if pid is None:
        return None, False
    try:
        process = psutil.Process(pid)
        name = str(process.name())
        cmdline = [str(a) for a in process.cmdline()[:3]]
    except (psutil.Error, OSError):
        return None, False
    looks = name == "helixd" or any(os.path.basename(a) == "helixd" for a in cmdline[:2])
    return name, looks


def _helixd_processes(daemon: dict[str, Any]) -> dict[int, str]:
    """pid → role for the running helixd, its providers and everything below them."""
    import psutil

    pid = daemon.get("pid")
    if not isinstance(pid, int):
        return {}
    roles: dict[int, str] = {pid: "helixd"}
    for provider in daemon.get("providers") or []:
        if isinstance(provider, dict) and isinstance(provider.get("pid"), int):
            roles[provider["pid"]] = f"helixd's provider {provider.get('name')}"
    for root, role in list(roles.items()):
        try:
            children = psutil.Process(root).children(recursive=True)
        except (psutil.Error, OSError):
            continue
        for child in children:
            roles.setdefault(child.pid, role if root != pid else "a process of helixd")
    return roles


# -- the endpoint -----------------------------------------------------------------------


def probe_endpoint(url: str, api_key: str | None, daemon: DaemonState) -> EndpointFacts:
    """``GET url/v1/models`` with a short timeout (the config's first key, if it has any)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or LOOPBACK, parts.port or 80
    conn = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        conn.request("GET", "/v1/models", headers=headers)
        response = conn.getresponse()
        body = response.read(1024 * 1024)
    except TimeoutError:
        return EndpointFacts(url, timed_out=True, daemon=daemon)
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return EndpointFacts(url, error=reason, daemon=daemon)
    finally:
        conn.close()
    models = None
    if response.status == 200:
        try:
            data = json.loads(body).get("data")
            models = len(data) if isinstance(data, list) else None
        except (ValueError, AttributeError):
            models = None
    return EndpointFacts(url, response.status, models, daemon=daemon)
