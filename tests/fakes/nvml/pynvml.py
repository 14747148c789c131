"""A fake ``pynvml`` (nvidia-ml-py) whose GPUs and processes live in a directory.

Put ``tests/fakes/nvml`` first on ``PYTHONPATH`` (or ``sys.path``) and ``import pynvml``
gets this module, so helixd's real NVML code runs against GPUs that do not exist. It
implements the subset of nvidia-ml-py 13.x that ``helixd.resources.gpu`` uses, with the
same names, signatures, return shapes and error classes:

- ``nvmlInit``/``nvmlShutdown`` (a reference count, like the real one);
- ``nvmlSystemGetDriverVersion``, ``nvmlSystemGetNVMLVersion`` → ``str`` (fixed);
- ``nvmlDeviceGetCount``, ``nvmlDeviceGetHandleByIndex``;
- ``nvmlDeviceGetName`` → ``str``, ``nvmlDeviceGetUUID`` → ``bytes`` (13.x decodes
  names but not UUIDs);
- ``nvmlDeviceGetMemoryInfo(handle, version=None)`` → ``.total .free .used`` (with a
  version: also ``.version .reserved``);
- ``nvmlDeviceGet{Compute,Graphics}RunningProcesses`` and their ``_v2`` forms → objects
  with ``.pid .usedGpuMemory .gpuInstanceId .computeInstanceId``;
- ``NVMLError`` (``.value``; ``NVMLError(code)`` builds the subclass for the code) with
  ``NVMLError_<Name>`` subclasses and the real messages, ``NVMLLibraryMismatchError``.

State, read afresh on every call, from the directory named by ``HELIXD_FAKE_NVML_DIR``:

- ``devices.json``: ``[{"name": …, "uuid": "GPU-…", "total_mib": 24576,
  "baseline_used_mib": 300}, …]``. Without the variable or the file, ``nvmlInit`` raises
  ``NVMLError_LibraryNotFound``, as on a machine without the driver.
- ``procs/<pid>.json``: ``{"device": 0, "bytes": N}`` or a list of such, written by a
  fake GPU process (``tests/fakes/gpu_holder.py``). A file counts only while its pid is
  alive and not a zombie — a real driver frees a process's memory when it exits — and an
  optional ``"starttime"`` (field 22 of ``/proc/<pid>/stat``) guards against pid reuse.
  Stale files are deleted.
- ``faults.json`` (optional): ``{"<function name>": code}`` or
  ``{"<function name>": {"<device index>": code}}`` makes that call raise
  ``NVMLError(code)``, e.g. ``{"nvmlDeviceGetMemoryInfo": {"0": 15}}`` loses GPU 0.

Compute processes only: the graphics lists are always empty. ``used = baseline + the
live allocations``, ``free = total - used`` (floored at 0).
"""

from __future__ import annotations

import json
import os
import string
import sys
import threading
from pathlib import Path
from typing import Any

ENV_DIR = "HELIXD_FAKE_NVML_DIR"
MIB = 1024 * 1024

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_UNKNOWN = 999

NVML_VALUE_NOT_AVAILABLE_uint = 0xFFFFFFFF  # gpuInstanceId outside MIG mode
nvmlMemory_v2 = 0x02000028


class NVMLLibraryMismatchError(Exception):
    """Raised by the unversioned process queries when the driver lacks their entry point."""


class NVMLError(Exception):
    """An NVML return code as an exception; ``NVMLError(code)`` is the code's subclass."""

    _valClassMapping: dict[int, type[NVMLError]] = {}
    _errcode_to_string = {  # the real table's entries for these codes
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        # The real module asks the library for unknown codes; without one, its fallback.
        text = NVMLError._errcode_to_string.get(self.value)
        return text if text is not None else f"NVML Error with code {self.value}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = Exception.__hash__


def _make_error_classes() -> None:
    # As the real module does: NVML_ERROR_GPU_IS_LOST becomes NVMLError_GpuIsLost, …
    module = sys.modules[__name__]
    for name in [n for n in dir(module) if n.startswith("NVML_ERROR_")]:
        words = string.capwords(name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        code = getattr(module, name)

        def new(cls: type[NVMLError], *args: Any, _code: int = code) -> NVMLError:
            return NVMLError.__new__(cls, _code)

        cls = type(f"NVMLError_{words}", (NVMLError,), {"__new__": new})
        cls.__module__ = __name__
        setattr(module, cls.__name__, cls)
        NVMLError._valClassMapping[code] = cls


_make_error_classes()
# Named for the type checker's sake; _make_error_classes created them above.
NVMLError_Uninitialized: type[NVMLError] = NVMLError._valClassMapping[1]
NVMLError_InvalidArgument: type[NVMLError] = NVMLError._valClassMapping[2]
NVMLError_NotSupported: type[NVMLError] = NVMLError._valClassMapping[3]
NVMLError_LibraryNotFound: type[NVMLError] = NVMLError._valClassMapping[12]
NVMLError_DriverNotLoaded: type[NVMLError] = NVMLError._valClassMapping[9]
NVMLError_FunctionNotFound: type[NVMLError] = NVMLError._valClassMapping[13]
NVMLError_GpuIsLost: type[NVMLError] = NVMLError._valClassMapping[15]


class nvmlFriendlyObject:
    """A plain object with one attribute per struct field, as the real module returns."""

    def __init__(self, dictionary: dict[str, Any]) -> None:
        for key, value in dictionary.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return str(self.__dict__)


class c_nvmlDevice_t:
    """An opaque device handle."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<fake c_nvmlDevice_t {self.index}>"


_lock = threading.Lock()
_refcount = 0


def _state_dir() -> Path | None:
    value = os.environ.get(ENV_DIR)
    return Path(value) if value else None


def _devices() -> list[dict[str, Any]]:
    directory = _state_dir()
    if directory is None:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    try:
        devices: list[dict[str, Any]] = json.loads((directory / "devices.json").read_text())
    except FileNotFoundError:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND) from None
    return devices


def _fault(function: str, index: int | None = None) -> None:
    directory = _state_dir()
    if directory is None:
        return
    try:
        faults = json.loads((directory / "faults.json").read_text())
    except FileNotFoundError:
        return
    code = faults.get(function)
    if isinstance(code, dict):
        code = code.get(str(index))
    if code is not None:
        raise NVMLError(int(code))


def _check_init() -> None:
    if _refcount <= 0:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _device(handle: c_nvmlDevice_t) -> dict[str, Any]:
    _check_init()
    if not isinstance(handle, c_nvmlDevice_t):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    devices = _devices()
    if not 0 <= handle.index < len(devices):
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)  # the device went away since the handle
    return devices[handle.index]


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state on (field 3), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_starttime(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks); None if gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def _alive(pid: int, starttime: int | None) -> bool:
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return starttime is None or int(fields[19]) == starttime


def allocations() -> dict[int, dict[int, int]]:
    """Live allocations: pid → {device index → bytes}; deletes the files of dead pids."""
    directory = _state_dir()
    if directory is None:
        return {}
    result: dict[int, dict[int, int]] = {}
    for path in sorted((directory / "procs").glob("*.json")):
        try:
            pid = int(path.stem)
            data = json.loads(path.read_text())
        except (ValueError, FileNotFoundError):
            continue  # not ours, or removed by another reader meanwhile
        entries = data if isinstance(data, list) else [data]
        starttime = next((e["starttime"] for e in entries if "starttime" in e), None)
        if not _alive(pid, starttime):
            path.unlink(missing_ok=True)
            continue
        per_device = result.setdefault(pid, {})
        for entry in entries:
            index = int(entry["device"])
            per_device[index] = per_device.get(index, 0) + int(entry["bytes"])
    return result


def nvmlInitWithFlags(flags: int) -> None:
    global _refcount
    _fault("nvmlInit")
    _devices()  # no state → no library, like a host without the driver
    with _lock:
        _refcount += 1


def nvmlInit() -> None:
    nvmlInitWithFlags(0)


def nvmlShutdown() -> None:
    global _refcount
    with _lock:
        if _refcount <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        _refcount -= 1


def nvmlSystemGetDriverVersion() -> str:
    # nvidia-ml-py 13.x returns these decoded, like device names.
    _check_init()
    _fault("nvmlSystemGetDriverVersion")
    return "550.54.15"


def nvmlSystemGetNVMLVersion() -> str:
    _check_init()
    _fault("nvmlSystemGetNVMLVersion")
    return "12.550.54.15"


def nvmlDeviceGetCount() -> int:
    _check_init()
    _fault("nvmlDeviceGetCount")
    return len(_devices())


def nvmlDeviceGetHandleByIndex(index: int) -> c_nvmlDevice_t:
    _check_init()
    _fault("nvmlDeviceGetHandleByIndex", index)
    if not 0 <= index < len(_devices()):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return c_nvmlDevice_t(index)


def nvmlDeviceGetName(handle: c_nvmlDevice_t) -> str:
    device = _device(handle)
    _fault("nvmlDeviceGetName", handle.index)
    return str(device["name"])


def nvmlDeviceGetUUID(handle: c_nvmlDevice_t) -> bytes:
    device = _device(handle)
    _fault("nvmlDeviceGetUUID", handle.index)
    return str(device["uuid"]).encode()


def nvmlDeviceGetMemoryInfo(handle: c_nvmlDevice_t, version: int | None = None) -> Any:
    device = _device(handle)
    _fault("nvmlDeviceGetMemoryInfo", handle.index)
    total = int(device["total_mib"]) * MIB
    baseline = int(device.get("baseline_used_mib", 0)) * MIB
    allocated = sum(per.get(handle.index, 0) for per in allocations().values())
    used = min(total, baseline + allocated)
    fields: dict[str, Any] = {"total": total, "free": total - used, "used": used}
    if version:
        # v2 reports the driver's share apart; the fake's baseline plays that part.
        fields |= {"version": version, "reserved": baseline, "used": used - baseline}
    return nvmlFriendlyObject(fields)


def _running(handle: c_nvmlDevice_t, function: str) -> list[nvmlFriendlyObject]:
    _device(handle)
    _fault(function, handle.index)
    if "Graphics" in function:
        return []
    return [
        nvmlFriendlyObject(
            {
                "pid": pid,
                "usedGpuMemory": per_device[handle.index],
                "gpuInstanceId": NVML_VALUE_NOT_AVAILABLE_uint,
                "computeInstanceId": NVML_VALUE_NOT_AVAILABLE_uint,
            }
        )
        for pid, per_device in allocations().items()
        if handle.index in per_device
    ]


def _versioned(function: str, handle: c_nvmlDevice_t) -> list[nvmlFriendlyObject]:
    # The real unversioned queries call the _v3 entry point and turn its absence (a driver
    # before R510) into NVMLLibraryMismatchError; a fault of 13 on them plays that driver.
    try:
        return _running(handle, function)
    except NVMLError_FunctionNotFound:
        raise NVMLLibraryMismatchError(
            "Unversioned function called and the pyNVML version does not match the NVML lib "
            f"version. Either use matching pyNVML and NVML lib versions or use a versioned "
            f"function such as {function}_v2"
        ) from None


def nvmlDeviceGetComputeRunningProcesses(handle: c_nvmlDevice_t) -> list[nvmlFriendlyObject]:
    return _versioned("nvmlDeviceGetComputeRunningProcesses", handle)


def nvmlDeviceGetComputeRunningProcesses_v2(handle: c_nvmlDevice_t) -> list[nvmlFriendlyObject]:
    return _running(handle, "nvmlDeviceGetComputeRunningProcesses_v2")


def nvmlDeviceGetGraphicsRunningProcesses(handle: c_nvmlDevice_t) -> list[nvmlFriendlyObject]:
    return _versioned("nvmlDeviceGetGraphicsRunningProcesses", handle)


def nvmlDeviceGetGraphicsRunningProcesses_v2(handle: c_nvmlDevice_t) -> list[nvmlFriendlyObject]:
    return _running(handle, "nvmlDeviceGetGraphicsRunningProcesses_v2")
