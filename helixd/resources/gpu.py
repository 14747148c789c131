"""GPU figures through NVML (the ``pynvml`` module of nvidia-ml-py).

``GpuReader`` opens NVML once, picks the devices that ``resources.gpus`` selects, and reads
their memory and the GPU memory of every process on them. All of it blocks (NVML calls
go into the driver), so the monitor calls it from a worker thread.

A host without the driver, the library or any GPU is normal: the reader becomes
unavailable with a reason and helixd runs on host RAM alone. Only a selection that names
a GPU that does not exist is an error, because the user asked for something impossible.

Process ids are the ones NVML reports: those of the PID namespace of the driver, that is
the host's. In a container with a PID namespace of its own they do not match the pids
helixd sees, and per-process attribution finds nothing (device totals stay right).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from helixd.errors import DeviceError

log = logging.getLogger("helixd.resources")

GpuSelection = Literal["auto", "none"] | Sequence[int]

_COMPUTE = "nvmlDeviceGetComputeRunningProcesses"
_GRAPHICS = "nvmlDeviceGetGraphicsRunningProcesses"


@dataclass(frozen=True)
class GpuDevice:
    """One GPU and its memory at the time of a read, in bytes.

    ``used`` includes the memory the driver reserves for itself (NVML's v1 figures), so
    ``used + free == total`` and ``free`` is exactly what a new allocation can get.
    """

    index: int
    name: str
    uuid: str
    total_bytes: int
    used_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class GpuReading:
    """The selected devices and, per process id, the bytes it holds on each device index."""

    devices: tuple[GpuDevice, ...]
    process_bytes: Mapping[int, Mapping[int, int]]


class GpuSelectionError(DeviceError, ValueError):
    """``resources.gpus`` names a GPU index that this host does not have."""

    code = "no_such_gpu"

    def __init__(self, missing: Sequence[int], present: Sequence[tuple[int, str]]) -> None:
        self.missing = tuple(missing)
        self.present = tuple(present)
        names = ", ".join(f"{i} ({name})" for i, name in present)
        have = f"this host has GPU {names}" if present else "NVML sees no GPU on this host"
        wanted = ", ".join(str(i) for i in missing)
        super().__init__(
            f"resources.gpus selects GPU {wanted}, which does not exist: {have}. "
            'Fix resources.gpus in the config, or set it to "auto".'
        )


class GpuReadError(DeviceError, RuntimeError):
    """NVML failed while reading one device (it fell off the bus, the driver reset, …)."""

    code = "gpu_read_failed"

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"reading GPU {index} failed (NVML: {reason})")


class _NoSuchError(DeviceError):
    """Stands in for an exception class that an older nvidia-ml-py does not define."""

    code = "nvml_stand_in"


@dataclass(frozen=True)
class _Opened:
    """A selected device: its index, NVML handle and the names that never change."""

    index: int
    handle: Any
    name: str
    uuid: str


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returns str for names but bytes for UUIDs (13.x), and bytes for both
    # before 11.5; accept either everywhere.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class GpuReader:
    """NVML through nvidia-ml-py. Blocking: call from a thread.

    ``nvml`` is the module to use; the default imports ``pynvml`` at :meth:`open`, so a
    fake placed first on ``sys.path`` (the e2e tests do this) is picked up as well.
    """

    def __init__(self, selection: GpuSelection, nvml: Any = None) -> None:
        if isinstance(selection, str) and selection not in ("auto", "none"):
            raise ValueError(f'GPU selection must be "auto", "none" or indices, not {selection!r}')
        self._selection: Literal["auto", "none"] | tuple[int, ...] = (
            selection if isinstance(selection, str) else tuple(sorted(set(selection)))
        )
        self._nvml = nvml
        self._initialized = False
        self._devices: tuple[_Opened, ...] = ()
        self._reason = "GPU reader not opened"
        # NVML is thread-safe, but close() must not shut it down under a read in progress.
        self._lock = threading.Lock()
        # The process queries that work with this driver, found on first use (see _processes).
        self._queries: dict[str, Any] = {}
        self._unsupported: set[str] = set()

    @property
    def available(self) -> bool:
        """Whether NVML is open with at least one selected device."""
        return bool(self._devices)

    @property
    def unavailable_reason(self) -> str:
        """Why there are no GPU figures; ``""`` when available."""
        return "" if self.available else self._reason

    def open(self) -> None:
        """Initialize NVML and pick the devices; never raises for a missing driver or GPU.

        Raises :class:`GpuSelectionError` when an index in the selection does not exist.
        """
        with self._lock:
            if self._initialized or self._devices:
                return
            if self._selection == "none":
                self._reason = 'disabled by resources.gpus = "none"'
                return
            if not self._init():
                return
            try:
                self._devices = self._select()
            except BaseException:
                self._shutdown()
                raise
            if not self._devices:
                self._shutdown()

    def read(self) -> GpuReading:
        """Memory of every selected device and the GPU bytes of each process on them.

        Returns an empty reading when unavailable. Raises :class:`GpuReadError` naming the
        device when NVML fails on one.
        """
        with self._lock:
            devices: list[GpuDevice] = []
            process_bytes: dict[int, dict[int, int]] = {}
            for device in self._devices:
                devices.append(self._read_device(device, process_bytes))
            return GpuReading(tuple(devices), process_bytes)

    def close(self) -> None:
        """Shut NVML down once, if it was opened; the reader is unavailable afterwards."""
        with self._lock:
            if self._initialized:
                self._shutdown()
                self._reason = "GPU reader closed"
            self._devices = ()

    def _init(self) -> bool:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                self._reason = f"nvidia-ml-py is not installed ({exc})"
                return False
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except (nvml.NVMLError_LibraryNotFound, nvml.NVMLError_DriverNotLoaded) as exc:
            self._reason = f"no NVIDIA driver (NVML: {exc})"
            return False
        except nvml.NVMLError as exc:
            # e.g. "RM has detected an NVML/RM version mismatch." after a driver upgrade
            # without a reboot, or "Insufficient Permissions" on /dev/nvidia*.
            self._reason = f"NVML could not start: {exc}"
            return False
        self._initialized = True
        return True

    def _shutdown(self) -> None:
        self._initialized = False
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.debug("nvmlShutdown failed: %s", exc)

    def _select(self) -> tuple[_Opened, ...]:
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            self._reason = f"NVML cannot count GPUs: {exc}"
            return ()
        present: dict[int, _Opened | str] = {}
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = _text(nvml.nvmlDeviceGetName(handle))
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            except nvml.NVMLError as exc:
                present[index] = f"unreadable: {exc}"
                continue
            present[index] = _Opened(index, handle, name, uuid)
        if isinstance(self._selection, str):  # "auto": "none" never gets this far
            wanted = sorted(present)
        else:
            wanted = list(self._selection)
            missing = [i for i in wanted if i not in present]
            if missing:
                names = [(i, d if isinstance(d, str) else d.name) for i, d in present.items()]
                raise GpuSelectionError(missing, names)
        chosen: list[_Opened] = []
        for index in wanted:
            device = present[index]
            if isinstance(device, str):
                # A device NVML lists but cannot describe (lost, no permission) holds
                # nothing helixd can use; leave it out rather than fail every read.
                log.warning("GPU %d left out: %s", index, device)
                continue
            chosen.append(device)
        if not present:
            self._reason = "NVML found no NVIDIA GPU"
        elif not chosen:
            self._reason = "no selected GPU can be read: " + ", ".join(
                f"GPU {i} {present[i]}" for i in wanted
            )
        return tuple(chosen)

    def _read_device(self, device: _Opened, process_bytes: dict[int, dict[int, int]]) -> GpuDevice:
        nvml = self._nvml
        try:
            # v1 figures on purpose: "used" then counts the driver's reservation, so
            # used + free == total on every driver; the v2 call needs R510 or later.
            memory = nvml.nvmlDeviceGetMemoryInfo(device.handle)
            compute = self._processes(_COMPUTE, device.handle)
            graphics = self._processes(_GRAPHICS, device.handle)
        except nvml.NVMLError as exc:
            raise GpuReadError(device.index, str(exc)) from exc
        # A process with both a compute and a graphics context appears in both lists with
        # its whole figure each time, so the lists are combined with max, not summed.
        # Within one list, entries of one pid (one per MIG instance) are distinct memory.
        merged = _per_pid(compute)
        for pid, used in _per_pid(graphics).items():
            merged[pid] = max(merged.get(pid, 0), used)
        for pid, used in merged.items():
            process_bytes.setdefault(pid, {})[device.index] = used
        return GpuDevice(
            index=device.index,
            name=device.name,
            uuid=device.uuid,
            total_bytes=int(memory.total),
            used_bytes=int(memory.used),
            free_bytes=int(memory.free),
        )

    def _processes(self, query: str, handle: Any) -> list[Any]:
        nvml = self._nvml
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", _NoSuchError)
        for _ in range(2):
            call = self._queries.get(query) or getattr(nvml, query)
            try:
                return list(call(handle))
            except mismatch:
                # The plain name calls the _v3 entry point, which drivers before R510
                # lack; they answer the _v2 one with the same objects. Keep using it.
                self._queries[query] = getattr(nvml, f"{query}_v2")
            except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound) as exc:
                # A property of the device or driver (vGPU guests, some MIG set-ups), not
                # a failure: the device totals are still good, only attribution is lost.
                if query not in self._unsupported:
                    self._unsupported.add(query)
                    log.warning("%s: %s; no per-process GPU figures", query, exc)
                return []
        return []


def _per_pid(processes: Sequence[Any]) -> dict[int, int]:
    totals: dict[int, int] = {}
    for process in processes:
        # usedGpuMemory is None where the driver cannot tell (Windows WDDM, MIG without
        # privileges): the process is there, its size unknown, counted as 0.
        used = process.usedGpuMemory
        totals[int(process.pid)] = totals.get(int(process.pid), 0) + int(used or 0)
    return totals
