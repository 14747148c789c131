"""``helixctl diagnose``, the pure part for what listens: ports, the control socket, the endpoint.

Facts in, :class:`~helixctl.diagnose_rules.Check` out, as in :mod:`helixctl.diagnose_rules`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from helixctl.diagnose_rules import Check, DaemonState

# -- ports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortFacts:
    """One fixed port of the config: free, or who holds it."""

    key: str  # "providers.echo.port" or "proxy.listen"
    host: str
    port: int
    free: bool
    bind_error: str = ""  # a reason other than "in use" (EACCES, EADDRNOTAVAIL)
    holder_pid: int | None = None
    holder_name: str | None = None
    holder_is_ours: bool = False  # the running helixd or one of its children
    holder_role: str = ""  # "helixd" or "provider echo", when ours
    holder_looks_like_helixd: bool = False
    daemon_hidden: bool = False  # a helixd socket exists that this user may not use


def judge_port(f: PortFacts, config_path: str | None = None) -> Check:
    """Free, held by helixd itself (fine), or by someone else (the culprit, and the fix)."""
    name, where = f"port {f.port}", f"{f.host}:{f.port} ({f.key})"
    change = f"change {f.key}" + (f" in {config_path}" if config_path else "")
    if f.key.endswith(".port"):
        change += " (or set it to 'auto')"
    if f.free:
        return Check(name, "ok", f"{where}: free")
    if f.bind_error:
        fix = change
        if "permission" in f.bind_error.lower():
            fix = f"ports below 1024 need root or CAP_NET_BIND_SERVICE: {change}"
        elif "assign" in f.bind_error.lower():
            fix = f"the address is not one of this host's: {change}"
        return Check(name, "problem", f"{where}: cannot listen there: {f.bind_error}", fix)
    if f.holder_is_ours:
        pid = f" (pid {f.holder_pid})" if f.holder_pid else ""
        return Check(name, "ok", f"{where}: in use by {f.holder_role or 'helixd'}{pid}")
    if f.holder_pid is None:
        if f.daemon_hidden:
            return Check(
                name,
                "warning",
                f"{where}: taken by a process this user cannot see, probably the running "
                "helixd (its socket is not open to this user)",
                "run diagnose as root or as a member of the socket's group to be sure",
            )
        return Check(
            name,
            "problem",
            f"{where}: taken by a process this user cannot see",
            f"'sudo ss -ltnp sport = :{f.port}' names it; stop it, or {change}",
        )
    holder = f"{f.holder_name or 'a process'} (pid {f.holder_pid})"
    if f.holder_looks_like_helixd:
        return Check(
            name,
            "problem",
            f"{where}: taken by another helixd (pid {f.holder_pid}), one that does not "
            "answer on this config's control socket",
            f"stop it (kill {f.holder_pid}), or give this helixd its own port: {change}",
        )
    return Check(
        name,
        "problem",
        f"{where}: taken by {holder}",
        f"stop {f.holder_name or 'that process'} (kill {f.holder_pid}), or {change}",
    )


# -- the control socket -------------------------------------------------------------------


@dataclass(frozen=True)
class SocketFacts:
    """Whether helixd answers on its control socket, and if not, why."""

    path: str
    looked_at: tuple[str, ...]
    outcome: Literal["ok", "missing", "denied", "stale", "error"]
    error: str = ""
    daemon: dict[str, Any] = field(default_factory=dict)  # GET /v1/status, when ok
    group: str | None = None  # the socket's group, when denied
    owner: str | None = None
    user: str = ""
    in_group_now: bool = False  # this process has the group
    in_group_listed: bool = False  # /etc/group lists the user (a new login would have it)


def judge_socket(f: SocketFacts) -> Check:
    """Reachable (which helixd), or why not, with the fix."""
    name = "control socket"
    if f.outcome == "ok":
        d = f.daemon
        return Check(
            name,
            "ok",
            f"helixd {d.get('version', '?')} ({d.get('mode', '?')} mode), pid {d.get('pid', '?')}, "
            f"answers on {f.path}",
        )
    if f.outcome == "missing":
        return Check(
            name,
            "problem",
            f"helixd is not running: no control socket at {' or '.join(f.looked_at)}",
            "start it: 'sudo systemctl start helixd' (system service) or 'helixd --user' "
            "(user instance); or point --socket / HELIXD_SOCKET at its socket",
        )
    if f.outcome == "stale":
        return Check(
            name,
            "problem",
            f"helixd is not running: {f.path} exists but nothing answers on it "
            "(left over from a helixd that stopped)",
            "start helixd again; it replaces the stale socket",
        )
    if f.outcome == "denied":
        return Check(name, "problem", f"permission denied on {f.path}", _denied_fix(f))
    return Check(
        name, "problem", f.error or f"helixd at {f.path} did not answer", _unanswered_fix()
    )


def judge_same_config(running: str | None, checked: str | None) -> Check | None:
    """A warning when the helixd that answers runs another config than the one checked."""
    if not running or not checked or not os.path.isabs(running):
        return None
    if os.path.normpath(running) == os.path.normpath(checked):
        return None
    return Check(
        "control socket",
        "warning",
        f"the helixd that answers runs {running}, not {checked}; the ports it holds count "
        "as its own",
        "point --socket (or HELIXD_SOCKET) at the helixd of this config, or leave out --config",
    )


def _denied_fix(f: SocketFacts) -> str:
    if f.group is None:
        return f"run helixctl as {f.owner or 'the socket owner'} or root"
    if f.in_group_listed and not f.in_group_now:
        return (
            f"{f.user} is in group {f.group}, but this login session started before that: "
            f"log in again (or 'newgrp {f.group}')"
        )
    if f.in_group_now:
        return (
            f"{f.user} is in group {f.group}, but the socket does not let the group in: "
            "check [daemon] socket_mode (0660 for the group)"
        )
    who = f.user or "your user"
    return f"add {who} to group {f.group}: 'sudo usermod -aG {f.group} $USER', then log in again"


def _unanswered_fix() -> str:
    return "helixd may be stuck: see its log (journalctl -u helixd, or its stderr) and restart it"


# -- the endpoint -------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointFacts:
    """What ``GET <url>/v1/models`` answered, and whether this config's helixd runs.

    ``daemon``: ``running`` (it answers on the socket), ``hidden`` (a socket exists that
    this user may not use) or ``down``.
    """

    url: str
    status: int | None = None
    models: int | None = None
    error: str = ""  # connection refused, timed out, …
    timed_out: bool = False
    daemon: DaemonState = "down"


def judge_endpoint(f: EndpointFacts) -> Check:
    """Answering with a model list is ok; anything else names what it saw."""
    name, where = "endpoint", f"{f.url}/v1/models"
    if f.status is not None and f.daemon == "down":
        return Check(
            name,
            "warning",
            f"{where} answers (HTTP {f.status}), but this config's helixd is not running: "
            "another server holds the address",
            "see the port line above",
        )
    if f.status == 200:
        n = f.models
        listed = "" if n is None else f" (lists {n} model name{'s' if n != 1 else ''})"
        return Check(name, "ok", f"{where} answers{listed}")
    if f.status == 401:
        return Check(
            name,
            "warning",
            f"{where} answers 401: the running helixd has other api_keys than the config",
            "'helixctl reload', so the running helixd takes the config's keys",
        )
    if f.status is not None:
        return Check(
            name,
            "problem",
            f"{where} answers HTTP {f.status}",
            "see helixd's log (journalctl -u helixd, or its stderr)",
        )
    if f.timed_out:
        return Check(
            name,
            "problem",
            f"{where} did not answer in time",
            "helixd may be overloaded or stuck: see 'helixctl status' and its log",
        )
    if f.daemon == "down":
        return Check(
            name,
            "problem",
            f"nothing answers at {where} ({f.error})",
            "start helixd (see the control socket line)",
        )
    return Check(
        name,
        "problem",
        f"nothing answers at {where} ({f.error}), though helixd runs",
        "see helixd's log (journalctl -u helixd, or its stderr) for the endpoint's error",
    )


def endpoint_url(host: str, port: int) -> str:
    """The URL to reach a listen address from this host (wildcards mean loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
