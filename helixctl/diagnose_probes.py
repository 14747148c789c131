"""``helixctl diagnose``, the I/O edge on the host: GPUs, config, programs, files, disks.

Probes never raise for what they find (a missing driver, a missing program, a full disk
is a fact, not an error) and every outside call is bounded: subprocesses have short
timeouts, a program's ``--version`` output is read up to a few KiB. What the facts mean
is decided in :mod:`helixctl.diagnose_rules`. Sockets, ports and the endpoint are
probed in :mod:`helixctl.diagnose_probes_net`.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helixctl.diagnose_rules import (
    BinaryFacts,
    ConfigFacts,
    DiskFacts,
    GpuFact,
    ModelFileFacts,
    NvmlFacts,
    SystemdFacts,
    version_line,
)

if TYPE_CHECKING:
    from helixd.config import LoadedConfig, ProviderConfig
    from helixd.paths import Mode

VERSION_TIMEOUT_S = 3.0
VERSION_OUTPUT_LIMIT = 4096
SYSTEMCTL_TIMEOUT_S = 5.0
UNIT_FILES = (
    "/etc/systemd/system/helixd.service",
    "/run/systemd/system/helixd.service",
    "/lib/systemd/system/helixd.service",
    "/usr/lib/systemd/system/helixd.service",
)


# -- NVIDIA -------------------------------------------------------------------------------


def probe_nvml(selection: str | tuple[int, ...]) -> NvmlFacts:
    """Open NVML the way helixd does (``import pynvml``, so a test's fake is found too)."""
    nodes = tuple(sorted(glob.glob("/dev/nvidia[0-9]*")))
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError as exc:
        return NvmlFacts("no_module", nodes, error=str(exc), selection=selection)
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError and its subclasses, or a library that fails to load
        missing = tuple(
            getattr(nvml, name, ())
            for name in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")
        )
        no_driver = any(isinstance(cls, type) and isinstance(exc, cls) for cls in missing)
        return NvmlFacts(
            "no_driver" if no_driver else "error", nodes, error=str(exc), selection=selection
        )
    try:
        return _read_nvml(nvml, nodes, selection)
    finally:
        with contextlib.suppress(Exception):  # shutting down what we opened: nothing to say
            nvml.nvmlShutdown()


def _read_nvml(nvml: Any, nodes: tuple[str, ...], selection: str | tuple[int, ...]) -> NvmlFacts:
    driver = _nvml_text(nvml, "nvmlSystemGetDriverVersion")
    version = _nvml_text(nvml, "nvmlSystemGetNVMLVersion")
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception as exc:
        return NvmlFacts("error", nodes, error=f"cannot count GPUs: {exc}", selection=selection)
    gpus, unreadable = [], []
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:
            unreadable.append((index, str(exc)))
            continue
        gpus.append(GpuFact(index, _text(name), int(memory.total), int(memory.free)))
    return NvmlFacts(
        "ok",
        nodes,
        driver_version=driver,
        nvml_version=version,
        gpus=tuple(gpus),
        unreadable=tuple(unreadable),
        selection=selection,
    )


def _nvml_text(nvml: Any, function: str) -> str | None:
    call = getattr(nvml, function, None)
    if call is None:
        return None  # an nvidia-ml-py (or test fake) without it
    try:
        return _text(call())
    except Exception:
        return None


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returns bytes before 11.5 and str after, for most strings.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# -- the config ---------------------------------------------------------------------------


def find_config(
    option: str | None, mode_flag: str | None, daemon: dict[str, Any]
) -> tuple[ConfigFacts, LoadedConfig | None, Mode]:
    """``--config``, ``HELIXD_CONFIG``, the running helixd's, then the default places."""
    from helixd.config import ConfigError, describe, load_config
    from helixd.paths import default_mode, default_paths, parse_mode

    mode = parse_mode(mode_flag)
    env = os.environ.get("HELIXD_CONFIG")
    if option:
        path, source = Path(option), "--config"
    elif env:
        path, source = Path(env), "HELIXD_CONFIG"
    elif daemon.get("config") and mode_flag is None:
        path, source = Path(daemon["config"]), "the running helixd's"
        mode = "system" if daemon.get("mode") == "system" else "user"
    else:
        first = default_mode()
        modes: list[Mode] = (
            [mode] if mode_flag else [first, "user" if first == "system" else "system"]
        )
        places = [(default_paths(m).config, m) for m in modes]
        found = next(((p, m) for p, m in places if p.exists()), None)
        if found is None:
            looked = tuple(str(p) for p, _ in places)
            return ConfigFacts(None, "", looked_at=looked), None, mode
        path, mode = found
        source = f"{mode} default"
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        return ConfigFacts(str(path), source, error=str(exc)), None, mode
    return ConfigFacts(str(path), source, summary=describe(loaded.config)), loaded, mode


# -- provider binaries and model files ----------------------------------------------------


def probe_binaries(loaded: LoadedConfig) -> list[BinaryFacts]:
    """Each provider's program on PATH, with ``--version`` asked of all at once."""
    from helixd.kinds import kind_defaults

    facts: list[BinaryFacts] = []
    for name, provider in loaded.config.providers.items():
        if provider.kind == "remote":
            facts.append(BinaryFacts(name, provider.kind, "", remote_url=provider.url))
            continue
        argv = provider.command or list(kind_defaults(provider.kind).command or ())
        facts.append(_locate(name, provider, argv[0] if argv else ""))
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda f: _with_version(f, loaded), facts))


def _locate(name: str, provider: ProviderConfig, first: str) -> BinaryFacts:
    kind = provider.kind
    if first == "{python}":
        return BinaryFacts(
            name,
            kind,
            first,
            resolved=sys.executable,
            version=f"Python {platform.python_version()} (helixd's own interpreter)",
        )
    if "{" in first:
        return BinaryFacts(name, kind, first, templated=True)
    search = provider.env.get("PATH") or os.environ.get("PATH", os.defpath)
    if "/" in first:
        candidate = Path(first)
        if not candidate.is_absolute():
            candidate = (provider.cwd or Path.cwd()) / candidate
        if not candidate.exists():
            return BinaryFacts(name, kind, first, searched=search)
        runnable = candidate.is_file() and os.access(candidate, os.X_OK)
        return BinaryFacts(name, kind, first, resolved=str(candidate), executable=runnable)
    found = shutil.which(first, path=search)
    return BinaryFacts(name, kind, first, resolved=found, searched=search)


def _with_version(facts: BinaryFacts, loaded: LoadedConfig) -> BinaryFacts:
    from dataclasses import replace

    if facts.resolved is None or facts.version or not facts.executable:
        return facts
    provider = loaded.config.providers[facts.provider]
    # The provider's own env may be needed to run it (LD_LIBRARY_PATH); placeholders not.
    env = dict(os.environ) | {k: v for k, v in provider.env.items() if "{" not in v}
    cwd = provider.cwd if provider.cwd is not None and provider.cwd.is_dir() else None
    version, note = program_version([facts.resolved, "--version"], env, cwd)
    return replace(facts, version=version, version_note=note)


def program_version(
    argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[str | None, str]:
    """``(version line, "")`` or ``(None, why not)``; output and time are both bounded.

    The program runs in a session of its own and its whole group is killed at the end,
    so one that starts serving instead of printing a version cannot linger.
    """
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        return None, f"cannot run it: {exc.strerror}"
    assert proc.stdout is not None
    output, deadline = b"", time.monotonic() + VERSION_TIMEOUT_S
    fd = proc.stdout.fileno()
    try:
        while len(output) < VERSION_OUTPUT_LIMIT:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, VERSION_OUTPUT_LIMIT - len(output))
            if not chunk:
                break
            output += chunk
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    finally:
        finished = proc.poll() is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    line = version_line(output.decode(errors="replace"))
    if line is not None:
        return line, ""
    if not finished:
        return None, f"--version did not finish in {VERSION_TIMEOUT_S:g} s"
    return None, f"--version printed no version (exit {proc.returncode})"


def probe_model_files(loaded: LoadedConfig) -> list[ModelFileFacts]:
    """Every model ``path``: exists, and readable by the user running diagnose."""
    import stat

    user = user_name(os.geteuid())
    facts = []
    for name, model in loaded.config.models.items():
        if model.path is None:
            continue
        try:
            is_dir = stat.S_ISDIR(os.stat(model.path).st_mode)
        except FileNotFoundError:
            facts.append(ModelFileFacts(name, str(model.path), False, False, user=user))
            continue
        except OSError as exc:  # a folder above it is closed to this user, …
            error = exc.strerror or str(exc)
            facts.append(
                ModelFileFacts(name, str(model.path), False, False, user=user, error=error)
            )
            continue
        readable = os.access(model.path, os.R_OK | os.X_OK if is_dir else os.R_OK)
        facts.append(ModelFileFacts(name, str(model.path), True, readable, is_dir, user))
    return facts


def user_name(uid: int) -> str:
    """The login name of ``uid``, or the number when it has none."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# -- disk, systemd -----------------------------------------------------------------------


def probe_disks(folders: list[tuple[str, Path]]) -> list[DiskFacts]:
    """Free space per file system, each naming the folders of helixd's it holds."""
    by_device: dict[int, tuple[str, list[tuple[str, str]], int, int]] = {}
    facts = []
    for label, folder in folders:
        existing = _nearest_existing(folder)
        try:
            device = os.stat(existing).st_dev
            usage = shutil.disk_usage(existing)
        except OSError as exc:
            error = exc.strerror or str(exc)
            facts.append(DiskFacts(((label, str(folder)),), str(existing), error=error))
            continue
        entry = by_device.setdefault(device, (str(existing), [], usage.free, usage.total))
        entry[1].append((label, str(folder)))
    for measured, labels, free, total in by_device.values():
        facts.append(DiskFacts(tuple(labels), measured, free, total))
    return facts


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def probe_systemd(daemon_running: bool) -> SystemdFacts | None:
    """``systemctl is-active`` / ``is-enabled`` when systemctl and the unit file exist."""
    systemctl = shutil.which("systemctl")
    unit = next((u for u in UNIT_FILES if os.path.exists(u)), None)
    if systemctl is None or unit is None:
        return None
    active, error = _systemctl(systemctl, "is-active")
    enabled, error2 = _systemctl(systemctl, "is-enabled")
    return SystemdFacts(unit, active, enabled, error or error2, daemon_running)


def _systemctl(systemctl: str, verb: str) -> tuple[str, str]:
    try:
        result = subprocess.run(
            [systemctl, verb, "helixd.service"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return "", f"systemctl {verb} did not answer in {SYSTEMCTL_TIMEOUT_S:g} s"
    except OSError as exc:
        return "", f"cannot run systemctl: {exc.strerror}"
    answer = result.stdout.strip().splitlines()
    if answer:
        return answer[0], ""
    said = result.stderr.strip().splitlines()
    return "", said[0] if said else f"systemctl {verb} exited {result.returncode}"
