"""``helixctl diagnose``: one command for "why doesn't it work".

It looks at the NVIDIA driver, the config (helixd's own validator), each provider's
program and each model's file, the fixed ports, the control socket, free disk space,
the systemd unit and the endpoint, and prints one line per check — ok, info, warning or
problem, each problem with its fix. Exit 1 when any check is a problem.

The probes (:mod:`helixctl.diagnose_probes`, ``…_probes_net``) gather facts; the rules
(:mod:`helixctl.diagnose_rules`, ``…_rules_net``) turn them into checks; this module
runs them in order.
Imported only by the ``diagnose`` command, so the rest of helixctl stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helixctl import diagnose_probes as probes
from helixctl import diagnose_probes_net as net
from helixctl.diagnose_rules import (
    Check,
    DaemonState,
    exit_code,
    judge_binary,
    judge_config,
    judge_disk,
    judge_model_file,
    judge_nvml,
    judge_systemd,
    render,
)
from helixctl.diagnose_rules_net import (
    SocketFacts,
    endpoint_url,
    judge_endpoint,
    judge_port,
    judge_same_config,
    judge_socket,
)

if TYPE_CHECKING:
    from helixctl.context import Context
    from helixd.config import LoadedConfig
    from helixd.paths import Mode


def run(ctx: Context, config_option: str | None, mode_flag: str | None) -> None:
    """Print the diagnosis (a list of checks as JSON with ``--json``); exit 1 on a problem."""
    checks = diagnose(ctx.socket_path, config_option, mode_flag)
    ctx.emit([c.as_json() for c in checks], render(checks))
    code = exit_code(checks)
    if code:
        sys.exit(code)


def diagnose(
    socket_option: str | None, config_option: str | None, mode_flag: str | None
) -> list[Check]:
    """Gather every fact and judge it; the checks in the order they are printed."""
    sock = _probe_socket(socket_option, None)
    config_facts, loaded, mode = probes.find_config(config_option, mode_flag, sock.daemon)
    explicit = socket_option or os.environ.get("HELIXD_SOCKET")
    if sock.outcome != "ok" and loaded is not None and not explicit:
        # The config may put the socket somewhere else than the default places.
        config_socket = str(loaded.paths(mode).socket)
        if config_socket not in sock.looked_at:
            sock = _probe_socket(None, config_socket)
    daemon = sock.daemon

    selection: str | tuple[int, ...] = "auto"
    if loaded is not None:
        gpus = loaded.config.resources.gpus
        selection = gpus if isinstance(gpus, str) else tuple(gpus)
    checks = judge_nvml(probes.probe_nvml(selection))
    checks.append(judge_config(config_facts))
    if loaded is not None:
        checks += [judge_binary(f) for f in probes.probe_binaries(loaded)]
        checks += [judge_model_file(f) for f in probes.probe_model_files(loaded)]
        hidden = sock.outcome == "denied"
        ports = net.probe_ports(net.fixed_ports(loaded), daemon, hidden)
        checks += [judge_port(f, config_facts.path) for f in ports]
    checks.append(judge_socket(sock))
    other = judge_same_config(daemon.get("config"), config_facts.path)
    if other is not None:
        checks.append(other)
    folders = _folders(daemon, loaded, mode)
    checks += [judge_disk(f) for f in probes.probe_disks(folders)]
    systemd = probes.probe_systemd(sock.outcome == "ok")
    if systemd is not None:
        checks.append(judge_systemd(systemd))
    url = _endpoint(daemon, loaded)
    if url is not None:
        key = loaded.config.proxy.api_keys[0] if loaded and loaded.config.proxy.api_keys else None
        checks.append(judge_endpoint(net.probe_endpoint(url, key, _daemon_state(sock))))
    return checks


def _daemon_state(sock: SocketFacts) -> DaemonState:
    if sock.outcome == "ok":
        return "running"
    return "hidden" if sock.outcome == "denied" else "down"


def _probe_socket(option: str | None, config_socket: str | None) -> SocketFacts:
    """The socket helixctl would use; with ``config_socket``, that one first."""
    from helixctl.transport import find_socket

    path, looked_at = find_socket(option)
    if config_socket is not None and config_socket not in looked_at:
        looked_at = [config_socket, *looked_at]
        if os.path.exists(config_socket) or not os.path.exists(path):
            path = config_socket
    return net.probe_socket(path, looked_at)


def _folders(
    daemon: dict[str, Any], loaded: LoadedConfig | None, mode: Mode
) -> list[tuple[str, Path]]:
    """The running helixd's state and log dirs, else the config's; backups under state."""
    if daemon.get("state_dir") and daemon.get("log_dir"):
        state, logs = Path(daemon["state_dir"]), Path(daemon["log_dir"])
    elif loaded is not None:
        paths = loaded.paths(mode)
        state, logs = paths.state_dir, paths.log_dir
    else:
        return []
    return [("state dir", state), ("log dir", logs), ("backups", state / "backups")]


def _endpoint(daemon: dict[str, Any], loaded: LoadedConfig | None) -> str | None:
    """Where the endpoint answers: the running helixd's address, else the config's."""
    proxy = daemon.get("proxy")
    if isinstance(proxy, dict) and isinstance(proxy.get("listen"), str):
        host, _, port = proxy["listen"].rpartition(":")
        if port.isdigit():
            return endpoint_url(host.strip("[]"), int(port))
    if loaded is None:
        return None
    from helixd.config.proxy import split_listen

    host, port = split_listen(loaded.config.proxy.listen)
    return endpoint_url(host, port) if port else None
