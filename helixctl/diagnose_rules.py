"""``helixctl diagnose``, the pure part: gathered facts in, checks and their text out.

Every function here takes what :mod:`helixctl.diagnose_probes` found on the host and says
what it means — ok, info, warning or problem, and for anything wrong the fix — without
touching the host, so each verdict is tested with plain values. The checks of what
listens (ports, the control socket, the endpoint) are in :mod:`helixctl.diagnose_rules_net`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["ok", "info", "warning", "problem"]
# Whether the config's helixd runs: answers on its socket, has one this user may not use, or not.
DaemonState = Literal["running", "hidden", "down"]

GIB = 1024**3
MIB = 1024**2
# Free space under either figure is a warning; under DISK_PROBLEM_BYTES writes fail soon.
DISK_WARN_BYTES = 1 * GIB
DISK_WARN_PERCENT = 5.0
DISK_PROBLEM_BYTES = 100 * MIB


@dataclass(frozen=True)
class Check:
    """One line of the diagnosis: what was checked, the verdict, and the fix when wrong."""

    check: str
    status: Status
    message: str
    fix: str | None = None

    def as_json(self) -> dict[str, Any]:
        """``{check, status, message, fix}`` for ``--json``."""
        return asdict(self)


# -- NVIDIA driver and NVML ---------------------------------------------------------------


@dataclass(frozen=True)
class GpuFact:
    """One GPU as NVML lists it."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class NvmlFacts:
    """What NVML said, and whether the host has NVIDIA device nodes at all.

    ``outcome``: ``no_module`` (nvidia-ml-py missing), ``no_driver`` (library or driver
    not found), ``error`` (NVML failed otherwise), ``ok``.
    """

    outcome: Literal["no_module", "no_driver", "error", "ok"]
    device_nodes: tuple[str, ...] = ()
    error: str = ""
    driver_version: str | None = None
    nvml_version: str | None = None
    gpus: tuple[GpuFact, ...] = ()
    unreadable: tuple[tuple[int, str], ...] = ()  # (index, NVML's error) of GPUs it lists
    selection: str | tuple[int, ...] = "auto"  # resources.gpus of the config


def judge_nvml(f: NvmlFacts) -> list[Check]:
    """The driver line, then one line per GPU."""
    nodes = ", ".join(f.device_nodes[:3]) + (" …" if len(f.device_nodes) > 3 else "")
    ram_only = "helixd runs in RAM-only mode"
    if f.outcome == "no_module":
        if not f.device_nodes:
            return [Check("nvidia", "info", f"no NVIDIA GPU; {ram_only}")]
        return [
            Check(
                "nvidia",
                "problem",
                f"NVIDIA devices are present ({nodes}) but nvidia-ml-py cannot be imported "
                f"({f.error}); {ram_only}",
                "install nvidia-ml-py into helixd's environment (pip install nvidia-ml-py)",
            )
        ]
    if f.outcome == "no_driver" and not f.device_nodes:
        return [Check("nvidia", "info", f"no NVIDIA GPU; {ram_only}")]
    if f.outcome in ("no_driver", "error"):
        return [Check("nvidia", "problem", _nvml_failure(f, nodes), _nvml_fix(f.error))]
    driver = f"driver {f.driver_version}" if f.driver_version else "driver version unknown"
    nvml = f"NVML {f.nvml_version}" if f.nvml_version else "NVML version unknown"
    versions = f"{driver}, {nvml}"
    if not f.gpus:
        status: Status = "problem" if f.device_nodes else "info"
        fix = "check 'nvidia-smi'; the driver may not see the card" if f.device_nodes else None
        found = f"{len(f.device_nodes)} device node(s) but " if f.device_nodes else ""
        checks = [Check("nvidia", status, f"{versions}; {found}NVML lists no GPU; {ram_only}", fix)]
    else:
        count = f"{len(f.gpus)} GPU{'s' if len(f.gpus) != 1 else ''}"
        checks = [Check("nvidia", "ok", f"{versions}; {count}")]
    for gpu in f.gpus:
        checks.append(
            Check(
                f"gpu{gpu.index}",
                "ok",
                f"{gpu.name}: {gib(gpu.free_bytes)} free of {gib(gpu.total_bytes)}",
            )
        )
    for index, error in f.unreadable:
        checks.append(
            Check(
                f"gpu{index}",
                "problem",
                f"NVML cannot read it ({error}); helixd leaves this GPU out",
                "check 'nvidia-smi' and the kernel log (dmesg); a lost GPU needs a reset or reboot",
            )
        )
    checks += _selection_checks(f)
    return checks


def _nvml_failure(f: NvmlFacts, nodes: str) -> str:
    where = f"NVIDIA devices are present ({nodes}) but " if f.device_nodes else ""
    return f"{where}NVML cannot start: {f.error.rstrip('.')}; helixd runs in RAM-only mode"


def _nvml_fix(error: str) -> str:
    lowered = error.lower()
    if "mismatch" in lowered:
        return "the driver was upgraded without a reboot: reboot (or reload the nvidia modules)"
    if "permission" in lowered:
        return (
            "the user running helixd cannot open /dev/nvidia*: add it to groups video and "
            "render (sudo usermod -aG video,render USER)"
        )
    return "install or load the NVIDIA driver until 'nvidia-smi' works, then restart helixd"


def _selection_checks(f: NvmlFacts) -> list[Check]:
    if f.selection == "none":
        return [Check("gpus", "info", 'resources.gpus = "none": helixd uses host RAM only')]
    if isinstance(f.selection, tuple):
        present = {g.index for g in f.gpus} | {index for index, _ in f.unreadable}
        missing = [i for i in f.selection if i not in present]
        if missing:
            have = ", ".join(str(i) for i in sorted(present)) or "none"
            return [
                Check(
                    "gpus",
                    "problem",
                    f"resources.gpus selects GPU {', '.join(map(str, missing))}, which this "
                    f"host does not have (GPUs: {have}); helixd refuses to start",
                    'fix resources.gpus in the config, or set it to "auto"',
                )
            ]
    return []


# -- the config ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigFacts:
    """Which config file was found (and how), and what the validator said of it."""

    path: str | None
    source: str  # "--config", "HELIXD_CONFIG", "the running helixd", "user default", …
    looked_at: tuple[str, ...] = ()
    error: str | None = None  # helixd's own validator's message
    summary: str = ""


def judge_config(f: ConfigFacts) -> Check:
    """Found and valid, or where it was looked for, or the validator's words."""
    if f.path is None:
        return Check(
            "config",
            "problem",
            f"no config file: looked at {' and '.join(f.looked_at)}",
            "write one with 'helixctl init' (or pass --config FILE)",
        )
    if f.error is not None:
        return Check(
            "config",
            "problem",
            f"{f.path} ({f.source}) is not valid:\n{f.error}",
            f"correct the keys named above, then 'helixctl config check {f.path}'",
        )
    return Check("config", "ok", f"{f.path} ({f.source}): valid; {f.summary}")


# -- provider binaries and model files ----------------------------------------------------


@dataclass(frozen=True)
class BinaryFacts:
    """A provider's program: as written, where it was found, and its version."""

    provider: str
    kind: str
    command: str  # the first word of the command, as configured or the kind's default
    resolved: str | None = None
    executable: bool = True
    searched: str = ""  # the PATH it was looked up on
    version: str | None = None
    version_note: str = ""  # why there is no version
    remote_url: str | None = None
    templated: bool = False  # the first word is a placeholder other than {python}


_INSTALL_HINTS = {
    "ollama": "install Ollama (curl -fsSL https://ollama.com/install.sh | sh)",
    "llamacpp": "install llama.cpp's llama-server (or pip install 'llama-cpp-python[server]')",
    "vllm": "pip install vllm into the environment the command names",
    "localai": "install LocalAI (the local-ai binary)",
    "tabbyapi": "install TabbyAPI and point the command at its venv's python",
}


def judge_binary(f: BinaryFacts) -> Check:
    """Found and runnable, with its version where it told one."""
    name = f"provider {f.provider}"
    key = f"providers.{f.provider}.command"
    if f.remote_url is not None:
        return Check(name, "ok", f"remote at {f.remote_url}; helixd does not run it")
    if f.templated:
        return Check(name, "info", f"{f.command!r} is filled in per model; not checked")
    if f.resolved is None:
        hint = _INSTALL_HINTS.get(f.kind, "install it")
        where = "no such file" if "/" in f.command else f"not on PATH {_short_path(f.searched)}"
        return Check(
            name,
            "problem",
            f"command not found: {f.command!r} ({where})",
            f"{hint}, or set {key} to the program's full path",
        )
    if not f.executable:
        return Check(
            name,
            "problem",
            f"{f.resolved} is not an executable file",
            f"chmod +x {f.resolved}, or fix {key}",
        )
    if f.version:
        detail = f": {f.version}"
    else:
        detail = f" (version unknown: {f.version_note})" if f.version_note else ""
    return Check(name, "ok", f"{f.resolved}{detail}")


def _short_path(search: str) -> str:
    """A PATH short enough for one line: its first folders and how many there are."""
    folders = [d for d in search.split(":") if d]
    if len(search) <= 80:
        return search
    return ":".join(folders[:3]) + f":… ({len(folders)} folders)"


@dataclass(frozen=True)
class ModelFileFacts:
    """A model's ``path``: whether it exists and this user can read it."""

    model: str
    path: str
    exists: bool
    readable: bool
    is_dir: bool = False
    user: str = ""
    error: str = ""  # why it could not be looked at (a closed folder above it)


def judge_model_file(f: ModelFileFacts) -> Check:
    """Exists and readable, or what to do."""
    name, key = f"model {f.model}", f"models.{f.model}.path"
    if f.error:
        return Check(
            name,
            "warning",
            f"cannot look at {f.path} as {f.user or 'this user'}: {f.error}",
            "run diagnose as root, or as the user helixd runs as, to check it",
        )
    if not f.exists:
        return Check(
            name,
            "problem",
            f"{f.path} does not exist",
            f"put the model file there, or correct {key}",
        )
    if not f.readable:
        what = "folder" if f.is_dir else "file"
        return Check(
            name,
            "problem",
            f"{f.path} exists but {f.user or 'this user'} cannot read it",
            f"make the {what} readable by the user helixd runs as (chmod/chown)",
        )
    return Check(name, "ok", f"{f.path}: readable")


# -- disk free ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskFacts:
    """Free space of one file system and which of helixd's folders it holds."""

    folders: tuple[tuple[str, str], ...]  # ("state dir", "/var/lib/helixd"), …
    measured: str  # the path that was measured (the nearest existing folder)
    free_bytes: int = 0
    total_bytes: int = 0
    error: str = ""


def judge_disk(f: DiskFacts) -> Check:
    """Warn under 1 GiB or 5 % free; a problem under 100 MiB."""
    what = folders_text(f.folders)
    name = "disk"
    if f.error:
        return Check(name, "warning", f"cannot measure free space for {what}: {f.error}")
    percent = 100.0 * f.free_bytes / f.total_bytes if f.total_bytes > 0 else 100.0
    figures = f"{gib(f.free_bytes)} free of {gib(f.total_bytes)} ({percent:.0f}%) for {what}"
    fix = (
        "free space: old backups (helixctl backup list), unused models, rotated logs in the log dir"
    )
    if f.total_bytes > 0 and f.free_bytes < DISK_PROBLEM_BYTES:
        return Check(name, "problem", f"only {figures}: writes will fail", fix)
    if f.total_bytes > 0 and (f.free_bytes < DISK_WARN_BYTES or percent < DISK_WARN_PERCENT):
        return Check(name, "warning", f"only {figures}", fix)
    return Check(name, "ok", figures)


def folders_text(folders: tuple[tuple[str, str], ...]) -> str:
    """``state dir /s (with logs/, backups/) and log dir /l``: a folder inside another
    listed one is named inside it."""

    def within(inner: str, outer: str) -> bool:
        return inner != outer and inner.startswith(outer.rstrip("/") + "/")

    shown = []
    for label, path in folders:
        if any(within(path, other) for _, other in folders):
            continue
        inside = [p[len(path.rstrip("/")) + 1 :] + "/" for _, p in folders if within(p, path)]
        shown.append(f"{label} {path}" + (f" (with {', '.join(inside)})" if inside else ""))
    return " and ".join(shown) if len(shown) <= 2 else ", ".join(shown)


# -- systemd ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemdFacts:
    """The unit's state, when systemctl exists and the unit file is installed."""

    unit_file: str
    active: str  # systemctl is-active: active, inactive, failed, activating, …
    enabled: str  # systemctl is-enabled: enabled, disabled, static, …
    error: str = ""  # systemctl could not say (no systemd running, timeout)
    daemon_running: bool = False  # some helixd answers on the socket


def judge_systemd(f: SystemdFacts) -> Check:
    """Active is fine; failed is a problem; inactive is a warning unless a user helixd runs."""
    name = "systemd"
    unit = f"helixd.service ({f.unit_file})"
    if f.error:
        return Check(name, "info", f"{unit} is installed, but systemctl cannot say: {f.error}")
    state = f"{f.active}, {f.enabled}"
    if f.active == "active":
        return Check(name, "ok", f"{unit}: {state}")
    if f.active == "failed":
        return Check(
            name,
            "problem",
            f"{unit}: {state}",
            "'journalctl -u helixd -n 50' says why; fix that, then 'sudo systemctl restart helixd'",
        )
    if f.active == "inactive":
        if f.daemon_running:
            return Check(name, "info", f"{unit}: {state}; a helixd outside systemd answers")
        fix = (
            "sudo systemctl start helixd"
            if f.enabled == "enabled"
            else "sudo systemctl enable --now helixd"
        )
        return Check(name, "warning", f"{unit}: {state}", fix)
    return Check(name, "warning", f"{unit}: {state}", "wait a moment and run diagnose again")


# -- program versions -------------------------------------------------------------------


def version_line(output: str) -> str | None:
    """The line of ``PROGRAM --version`` output that states the version, shortened."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    with_digit = [line for line in lines if any(ch.isdigit() for ch in line)]
    named = [line for line in with_digit if "version" in line.lower()]
    if not with_digit:
        return None
    best = (named or with_digit)[0]
    return best if len(best) <= 80 else best[:79] + "…"


# -- output -------------------------------------------------------------------------------


def gib(n: int) -> str:
    """``12.3 GiB``."""
    return f"{n / GIB:.1f} GiB"


def render(checks: list[Check]) -> str:
    """One line per check (status, name, message), the fix indented below, then a tally."""
    width = min(max((len(c.check) for c in checks), default=0), 24)
    lines = []
    for c in checks:
        head = f"{c.status:<8} {c.check:<{width}}  "
        pad = " " * len(head)
        first, *more = c.message.splitlines() or [""]
        lines.append((head + first).rstrip())
        lines += [pad + "  " + line for line in more]
        if c.fix:
            lines.append(pad + "fix: " + c.fix)
    lines.append(tally(checks))
    return "\n".join(lines)


def tally(checks: list[Check]) -> str:
    """``2 problems, 1 warning`` or ``no problems found``."""
    problems = sum(c.status == "problem" for c in checks)
    warnings = sum(c.status == "warning" for c in checks)
    if not problems and not warnings:
        return "no problems found"
    parts = []
    if problems:
        parts.append(f"{problems} problem{'s' if problems != 1 else ''}")
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    return ", ".join(parts)


def exit_code(checks: list[Check]) -> int:
    """1 when any check is a problem, else 0."""
    return 1 if any(c.status == "problem" for c in checks) else 0
