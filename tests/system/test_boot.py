"""helixd.service under a real systemd: boot a Debian root with systemd-nspawn.

tests/system/make-rootfs.sh builds a Debian bookworm root (debootstrap, cached) and
installs the helixd .deb built from this checkout into it. The test enables the unit,
writes a config with the built-in echo provider, boots the root with
``systemd-nspawn --boot`` and drives the container's systemd from the host with
``nsenter -t <its PID 1> -a systemctl ...``. It checks the package and the unit as
users meet them: what dpkg installed (conffile, symlinks, user and groups), the unit as
installed passes ``systemd-analyze verify``, start at boot with a STATUS= line,
``systemctl reload`` (good and broken config), a restart after the main process is
killed, the watchdog (pings arrive; a stalled daemon is restarted), ``helixctl status``
for a member of group helixd but not for others, and that ``systemctl stop`` ends
cleanly and leaves no provider process behind.

The container has its own network namespace (loopback only), so its ports never clash
with the host's; the network is only used while building the root, before the boot.

Needs root, debootstrap and systemd-nspawn (make-rootfs.sh apt-get installs the last
two) and network access to a Debian mirror and PyPI for the first build. Skips when
not root or when systemd-nspawn cannot boot a container on this host. Tests in this
module share one container and run in order.

HELIXD_TEST_KEEP=1 keeps the root directory (its path is printed) for debugging.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
MAKE_ROOTFS = REPO / "tests" / "system" / "make-rootfs.sh"
SKIP_STATUS = 77  # make-rootfs.sh: cannot run on this host

ROOTFS_TIMEOUT_S = 1200  # a cold debootstrap plus a pip install from PyPI
BOOT_TIMEOUT_S = 120
SERVICE_TIMEOUT_S = 120  # covers Restart= delay, start-up and TimeoutStopSec paths
CONFIG = "/etc/helixd/helixd.toml"
PROVIDER_CMDLINE = "helixd.providers.echo"  # `python -m helixd.providers.echo --port N`

# The echo provider is all a system test needs; debug logs help when something fails.
GOOD_CONFIG = """\
[daemon]
log_level = "debug"

[providers.demo]
kind = "echo"
"""
RELOADED_CONFIG = (
    GOOD_CONFIG
    + """
[providers.demo2]
kind = "echo"
"""
)
# Valid TOML, invalid config (unknown kind): the reload must be refused. It also lacks
# demo2, so a config that was wrongly applied would show in `helixctl status`.
BROKEN_CONFIG = """\
[providers.demo]
kind = "no-such-kind"
"""

# Commands in the container get a clean environment: nothing of the test runner's venv.
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
}

T = TypeVar("T")


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    diagnostics: Callable[[], str] = lambda: "",
) -> T:
    """Poll ``probe`` until it returns something other than None/False, or fail."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{diagnostics()}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Container:
    """A booted container: its root directory and its systemd, seen from the host."""

    root: Path
    nspawn: subprocess.Popen[bytes]
    leader: int  # the container's PID 1 (systemd), as a host PID
    log: Path

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all its namespaces), as root."""
        return subprocess.run(
            [_tool("nsenter"), "-t", str(self.leader), "-a", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=CONTAINER_ENV,
            stdin=subprocess.DEVNULL,
        )

    def systemctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, timeout=timeout)

    def prop(self, name: str, unit: str = "helixd.service") -> str:
        return self.systemctl("show", "-p", name, "--value", unit).stdout.strip()

    def is_active(self, unit: str = "helixd.service") -> str:
        return self.systemctl("is-active", unit).stdout.strip()

    def main_pid(self) -> int:
        return int(self.prop("MainPID") or 0)

    def write_config(self, text: str) -> None:
        # nspawn runs on the directory itself, so the host's write is the container's.
        path = self.root / CONFIG.lstrip("/")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)

    def provider_pids(self) -> list[int]:
        out = self.run("ps", "-eo", "pid=,args=").stdout
        return [
            int(line.split(None, 1)[0]) for line in out.splitlines() if PROVIDER_CMDLINE in line
        ]

    def status_doc(self) -> dict[str, Any]:
        result = self.run("helixctl", "--json", "status")
        assert result.returncode == 0, result.stdout + result.stderr
        doc = json.loads(result.stdout)
        assert isinstance(doc, dict)
        return doc

    def journal(self, lines: int = 80) -> str:
        result = self.run("journalctl", "--no-pager", "-n", str(lines), "-u", "helixd.service")
        return result.stdout + result.stderr

    def diagnostics(self) -> str:
        status = self.systemctl("status", "helixd.service")
        return (
            f"--- systemctl status helixd\n{status.stdout}{status.stderr}"
            f"--- journal\n{self.journal()}"
        )


def provider_names(doc: dict[str, Any]) -> set[str]:
    providers = doc.get("providers", [])
    if isinstance(providers, dict):
        return set(providers)
    return {p["name"] for p in providers}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found")
    return path


def _build_root(root: Path, log: Path) -> None:
    with log.open("wb") as out:
        # Its own process group, so a timeout or Ctrl-C also ends debootstrap/nspawn/pip.
        builder = subprocess.Popen(
            [str(MAKE_ROOTFS), str(root), str(REPO)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = builder.wait(timeout=ROOTFS_TIMEOUT_S)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(builder.pid, signal.SIGKILL)
            builder.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                pytest.fail(f"make-rootfs.sh took over {ROOTFS_TIMEOUT_S} s:\n{_tail(log)}")
            raise
    if returncode == SKIP_STATUS:
        pytest.skip(f"make-rootfs.sh cannot run here: {_tail(log, 3)}")
    if returncode != 0:
        pytest.fail(f"make-rootfs.sh failed ({returncode}):\n{_tail(log)}")


def _container_leader(nspawn_pid: int) -> int | None:
    """The host PID of the container's PID 1: nspawn's child that is init of a PID ns."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(
                line.split(":", 1)
                for line in (entry / "status").read_text().splitlines()
                if ":" in line
            )
        except OSError:
            continue
        if int(fields["PPid"]) == nspawn_pid and fields.get("NSpid", "").split()[-1:] == ["1"]:
            return int(entry.name)
    return None


def _boot(root: Path, log: Path) -> Container:
    machine = f"helixd-test-{os.getpid()}"
    argv = [
        _tool("systemd-nspawn"),
        "--boot",
        f"--directory={root}",
        f"--machine={machine}",
        # Own loopback only: the container's ports never meet the host's.
        "--private-network",
        "--console=passive",
    ]
    if not Path("/run/systemd/system").is_dir():
        # The host runs no systemd (e.g. it is a container itself): there is no machined
        # to register with and no manager to create a scope, so stay in our own cgroup.
        argv += ["--register=no", "--keep-unit"]
    with log.open("wb") as out:
        nspawn = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    container: Container | None = None
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            break
        if container is None:
            leader = _container_leader(nspawn.pid)
            if leader is not None:
                container = Container(root, nspawn, leader, log)
        # basic.target is the boot of the OS itself; helixd's own start is checked apart,
        # so a broken helixd fails the tests instead of looking like a host limitation.
        elif container.is_active("basic.target") == "active":
            return container
        time.sleep(0.1)
    reason = (
        f"exited with status {nspawn.returncode}"
        if nspawn.poll() is not None
        else f"did not reach basic.target in {BOOT_TIMEOUT_S} s"
    )
    _shutdown(nspawn, container.leader if container else None)
    pytest.skip(f"systemd-nspawn cannot boot a container here ({reason}):\n{_tail(log, 15)}")


def _shutdown(nspawn: subprocess.Popen[bytes], leader: int | None) -> None:
    """Stop the container: SIGTERM makes nspawn halt it cleanly; SIGKILL if that hangs."""
    if nspawn.poll() is None:
        nspawn.send_signal(signal.SIGTERM)
        try:
            nspawn.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Killing the PID namespace's init kills everything in the container.
            if leader is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leader, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(nspawn.pid, signal.SIGKILL)
            nspawn.wait(timeout=30)


def _unmount_below(path: Path) -> None:
    """Unmount anything left mounted under ``path`` in our namespace (deepest first)."""
    prefix = str(path.resolve()) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(prefix):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    if os.geteuid() != 0:
        pytest.skip("needs root: debootstrap and systemd-nspawn --boot")
    _tool("nsenter")
    workdir = Path(
        tempfile.mkdtemp(prefix="helixd-boot-", dir=os.environ.get("HELIXD_TEST_TMP", "/var/tmp"))
    )
    root = workdir / "root"
    booted: Container | None = None
    try:
        started = time.monotonic()
        _build_root(root, workdir / "make-rootfs.log")
        print(f"root file system ready in {time.monotonic() - started:.1f} s")
        (root / CONFIG.lstrip("/")).write_text(GOOD_CONFIG)
        # Enabled the way an administrator does it, on the offline root.
        enable = subprocess.run(
            [_tool("systemctl"), f"--root={root}", "enable", "helixd.service"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert enable.returncode == 0, enable.stderr
        started = time.monotonic()
        booted = _boot(root, workdir / "nspawn.log")
        print(f"container booted (basic.target) in {time.monotonic() - started:.1f} s")
        yield booted
    finally:
        if booted is not None:
            _shutdown(booted.nspawn, booted.leader)
        _unmount_below(workdir)
        # nspawn cannot remove this itself when /run is not a tmpfs (as in containers).
        shutil.rmtree(
            f"/run/systemd/nspawn/propagate/helixd-test-{os.getpid()}", ignore_errors=True
        )
        if os.environ.get("HELIXD_TEST_KEEP") == "1":
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def ct(container: Container) -> Iterator[Container]:
    """The shared container; its helixd journal is printed (shown on failure) after each test."""
    yield container
    if container.nspawn.poll() is None:
        print(container.diagnostics())
    else:
        print(f"--- nspawn exited\n{_tail(container.log)}")


def _wait_active(ct: Container) -> None:
    def probe() -> bool:
        state = ct.is_active()
        if state == "failed":
            pytest.fail(f"helixd.service failed\n{ct.diagnostics()}")
        return state == "active"

    wait_for("helixd.service to be active", probe, SERVICE_TIMEOUT_S, ct.diagnostics)


def test_starts_at_boot_and_reports_status(ct: Container) -> None:
    _wait_active(ct)
    assert ct.prop("Type") == "notify"
    assert ct.prop("User") == "helixd"
    # STATUS= from the daemon; READY=1 alone would leave it empty.
    status_text = wait_for(
        "a STATUS= line", lambda: ct.prop("StatusText") or None, 30, ct.diagnostics
    )
    print(f"StatusText={status_text}")
    wait_for(
        "the echo provider to run",
        lambda: ct.provider_pids() or None,
        SERVICE_TIMEOUT_S,
        ct.diagnostics,
    )
    # The daemon runs as helixd and the socket is where the unit's ExecReload looks.
    socket = ct.run("stat", "-c", "%a %U %G", "/run/helixd/helixd.sock")
    assert socket.stdout.split() == ["660", "helixd", "helixd"], socket.stdout + socket.stderr
    assert provider_names(ct.status_doc()) == {"demo"}


def test_package_is_installed_as_designed(ct: Container) -> None:
    status = ct.run("dpkg-query", "-W", "-f=${Status}\n${Conffiles}\n", "helixd")
    assert status.stdout.startswith("install ok installed"), status.stdout + status.stderr
    assert "/etc/helixd/helixd.toml " in status.stdout, "the config must be a conffile"
    for command in ("helixd", "helixctl"):
        link = ct.run("readlink", f"/usr/bin/{command}").stdout.strip()
        assert link == f"/opt/helixd/bin/{command}"
    groups = ct.run("id", "-nG", "helixd").stdout.split()
    assert {"helixd", "video", "render"} <= set(groups), groups
    # The example config the package ships (from etc/helixd.toml) is valid as is.
    check = ct.run(
        "runuser",
        "-u",
        "helixd",
        "--",
        "helixd",
        "--check-config",
        "/usr/src/helixd/etc/helixd.toml",
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_installed_unit_verifies(ct: Container) -> None:
    # The unit as installed by the .deb, with its real ExecStart=/usr/bin/helixd.
    result = ct.run("systemd-analyze", "verify", "--man=no", "helixd.service")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.strip() == "", f"systemd-analyze verify warned:\n{output}"
    assert ct.prop("FragmentPath") == "/lib/systemd/system/helixd.service"


def test_reload_applies_a_good_config(ct: Container) -> None:
    _wait_active(ct)
    pid = ct.main_pid()
    ct.write_config(RELOADED_CONFIG)
    result = ct.systemctl("reload", "helixd.service", timeout=SERVICE_TIMEOUT_S)
    assert result.returncode == 0, result.stderr + ct.diagnostics()
    assert ct.is_active() == "active"
    assert ct.main_pid() == pid, "a reload must not restart the daemon"
    # helixctl reload is synchronous: applied when systemctl reload returns.
    assert provider_names(ct.status_doc()) == {"demo", "demo2"}


def test_reload_refuses_a_broken_config(ct: Container) -> None:
    _wait_active(ct)
    pid = ct.main_pid()
    try:
        ct.write_config(BROKEN_CONFIG)
        result = ct.systemctl("reload", "helixd.service", timeout=SERVICE_TIMEOUT_S)
        assert result.returncode != 0, "reload of a broken config must fail"
        assert ct.is_active() == "active", ct.diagnostics()
        assert ct.main_pid() == pid
        # The old config (with demo2) stays in force.
        assert provider_names(ct.status_doc()) == {"demo", "demo2"}
        assert ct.prop("SubState") == "running"
    finally:
        ct.write_config(RELOADED_CONFIG)


def test_restarted_after_sigkill(ct: Container) -> None:
    _wait_active(ct)
    old_pid = ct.main_pid()
    old_providers = set(wait_for("providers", lambda: ct.provider_pids() or None, 60))
    restarts = int(ct.prop("NRestarts") or 0)
    result = ct.systemctl("kill", "--signal=SIGKILL", "--kill-whom=main", "helixd.service")
    assert result.returncode == 0, result.stderr

    def restarted() -> bool:
        pid = ct.main_pid()
        return pid not in (0, old_pid) and ct.is_active() == "active"

    wait_for("systemd to restart helixd", restarted, SERVICE_TIMEOUT_S, ct.diagnostics)
    assert int(ct.prop("NRestarts")) == restarts + 1
    # The killed daemon's providers died with it (KillMode=mixed / PR_SET_PDEATHSIG);
    # the new daemon starts its own.
    new_providers = wait_for(
        "new providers", lambda: ct.provider_pids() or None, 60, ct.diagnostics
    )
    assert not old_providers & set(new_providers), "providers of the killed daemon survived"


def test_watchdog_restarts_a_stalled_daemon(ct: Container) -> None:
    # A short watchdog for this test only, so the pings (every WatchdogSec/2) and the
    # timeout happen within seconds; 30 s in the shipped unit.
    dropin = ct.root / "etc/systemd/system/helixd.service.d/test-watchdog.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Service]\nWatchdogSec=3\n")
    try:
        assert ct.systemctl("daemon-reload").returncode == 0
        # The restarts here would otherwise count against StartLimitBurst= for later tests.
        ct.systemctl("reset-failed", "helixd.service")
        assert ct.systemctl("restart", "helixd.service", timeout=SERVICE_TIMEOUT_S).returncode == 0
        _wait_active(ct)
        assert ct.prop("WatchdogUSec") == "3s"
        first = ct.prop("WatchdogTimestampMonotonic")
        # WATCHDOG=1 arrives: systemd moves the timestamp on each ping.
        wait_for(
            "a WATCHDOG=1 ping",
            lambda: ct.prop("WatchdogTimestampMonotonic") != first,
            10,
            ct.diagnostics,
        )
        old_pid = ct.main_pid()
        # A stalled event loop: no more pings; systemd aborts and restarts the daemon.
        ct.systemctl("kill", "--signal=SIGSTOP", "--kill-whom=main", "helixd.service")

        def restarted() -> bool:
            return ct.main_pid() not in (0, old_pid) and ct.is_active() == "active"

        wait_for("the watchdog to restart helixd", restarted, SERVICE_TIMEOUT_S, ct.diagnostics)
        assert "Watchdog timeout" in ct.journal(200)
    finally:
        dropin.unlink()
        ct.systemctl("daemon-reload")
        ct.systemctl("reset-failed", "helixd.service")
        ct.systemctl("restart", "helixd.service", timeout=SERVICE_TIMEOUT_S)
    _wait_active(ct)
    assert ct.prop("WatchdogUSec") == "30s"


def test_status_for_members_of_group_helixd(ct: Container) -> None:
    _wait_active(ct)
    for user, groups in (("alice", ["--groups", "helixd"]), ("mallory", [])):
        if ct.run("id", user).returncode != 0:
            add = ct.run("useradd", "--create-home", *groups, user)
            assert add.returncode == 0, add.stderr
    member = ct.run("runuser", "-u", "alice", "--", "helixctl", "status")
    assert member.returncode == 0, member.stdout + member.stderr
    assert "demo" in member.stdout
    # Everyone else is kept out by the socket's mode 0660 (connect needs write access).
    stranger = ct.run("runuser", "-u", "mallory", "--", "helixctl", "status")
    assert stranger.returncode == 3, stranger.stdout + stranger.stderr


def test_stop_leaves_no_provider_process(ct: Container) -> None:
    _wait_active(ct)
    assert ct.provider_pids(), "no provider running before the stop"
    result = ct.systemctl("stop", "helixd.service", timeout=SERVICE_TIMEOUT_S + 150)
    assert result.returncode == 0, result.stderr
    assert ct.is_active() == "inactive"
    # A clean stop is SIGTERM to helixd, which stops its providers and exits 0;
    # "failed"/"timeout" would mean systemd had to SIGKILL.
    assert ct.prop("Result") == "success", ct.diagnostics()
    assert ct.provider_pids() == []
    # RuntimeDirectory= is removed at stop, the socket with it.
    assert ct.run("test", "-e", "/run/helixd").returncode != 0


def test_package_upgrade_restarts_and_purge_stops(ct: Container) -> None:
    assert ct.systemctl("start", "helixd.service", timeout=SERVICE_TIMEOUT_S).returncode == 0
    _wait_active(ct)
    pid = ct.main_pid()
    # Reinstalling runs postinst as an upgrade: a running helixd restarts on the new code.
    reinstall = ct.run("sh", "-c", "dpkg -i /var/tmp/helixd-deb/helixd_*.deb", timeout=300)
    assert reinstall.returncode == 0, reinstall.stdout + reinstall.stderr

    def restarted() -> bool:
        return ct.main_pid() not in (0, pid) and ct.is_active() == "active"

    wait_for("the upgrade to restart helixd", restarted, SERVICE_TIMEOUT_S, ct.diagnostics)
    # Purging stops the service first (prerm) and leaves no unit or enablement behind.
    purge = ct.run("dpkg", "--purge", "helixd", timeout=300)
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert ct.is_active() == "inactive"
    assert ct.provider_pids() == []
    assert ct.prop("LoadState") == "not-found"
    wants = ct.root / "etc/systemd/system/multi-user.target.wants/helixd.service"
    assert not wants.is_symlink()
