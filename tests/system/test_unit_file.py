"""Static checks of units/helixd.service with systemd's own tools.

- ``systemd-analyze verify``: the unit parses without a single warning (unknown keys,
  keys in the wrong section, bad values are warnings with exit status 0, so any output
  fails the test) and its commands exist.
- ``systemd-analyze security --offline=yes``: the overall exposure stays at 2.0 or lower.
- the hardening keeps GPUs usable (no PrivateDevices=, no MemoryDenyWriteExecute=, the
  NVIDIA and DRM device nodes allowed).

verify refuses a unit whose ExecStart= binary does not exist, and /usr/bin/helixd only
exists once the .deb is installed, so verify runs on a copy of the unit whose
/usr/bin/helixd and /usr/bin/helixctl point at the entry points of the Python running the
tests (the venv); nothing else in the copy changes. The real paths are exercised, on an
installed package, by test_boot.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "units" / "helixd.service"
MAX_EXPOSURE = 2.0
# Where the .deb puts the entry points (symlinks into the /opt/helixd venv).
INSTALLED_COMMANDS = {"helixd": "/usr/bin/helixd", "helixctl": "/usr/bin/helixctl"}

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; repeated keys all kept."""
    settings: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        settings.append((section, key.strip(), value.strip()))
    return settings


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit_settings(UNIT.read_text()) if s == section and k == key]


def test_exec_paths_are_the_installed_ones() -> None:
    assert values("ExecStart") == ["/usr/bin/helixd --system --config /etc/helixd/helixd.toml"]
    assert values("ExecReload") == ["/usr/bin/helixctl --socket /run/helixd/helixd.sock reload"]


def test_verify_has_no_warnings(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    bindir = Path(sys.executable).parent
    text = UNIT.read_text()
    for name, installed in INSTALLED_COMMANDS.items():
        local = bindir / name
        if not local.exists():
            pytest.fail(f"{local} missing: install the project first (pip install -e .)")
        # Only whole command words, so nothing else in the unit can change.
        text, count = re.subn(rf"(?<=[=\s]){re.escape(installed)}(?=\s|$)", str(local), text)
        assert count >= 1, f"{installed} not found in {UNIT}"
    copy = tmp_path / "helixd.service"
    copy.write_text(text)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = (result.stdout + result.stderr).replace(str(tmp_path), "units")
    assert result.returncode == 0, output
    assert output.strip() == "", f"systemd-analyze verify warned:\n{output}"


def test_security_exposure_is_low() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no exposure level in systemd-analyze output:\n{output}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{output}"


def test_hardening_keeps_gpus_reachable() -> None:
    # Both settings break GPU serving: PrivateDevices hides /dev/nvidia* and /dev/dri,
    # MemoryDenyWriteExecute kills CUDA/PyTorch JIT code.
    assert values("PrivateDevices") == []
    assert values("MemoryDenyWriteExecute") == []
    assert values("DevicePolicy") == ["closed"]
    allowed = {v.split()[0]: v.split()[1:] for v in values("DeviceAllow")}
    for device in (
        "char-nvidiactl",
        "char-nvidia-uvm",
        "char-nvidia-frontend",
        "char-nvidia-caps",
        "char-drm",
    ):
        assert allowed.get(device) == ["rw"], f"DeviceAllow={device} rw missing"


def test_socket_is_reachable_for_group_helixd() -> None:
    # Members of any [daemon] socket_group must be able to traverse /run/helixd; the
    # socket's own 0660 mode keeps everyone else out.
    assert values("RuntimeDirectory") == ["helixd"]
    assert values("RuntimeDirectoryMode") == ["0755"]
    assert values("User") == ["helixd"]
    assert values("Group") == ["helixd"]
