"""``ResourceMonitor``: GPU and RAM figures for the event loop, read in worker threads.

Every read is one ``asyncio.to_thread`` call, so NVML and ``/proc`` never stall the loop
(nor the systemd watchdog ping). The monitor holds the last good GPU reading:

When a GPU read fails (NVML answers an error for a device) the sample keeps the last good
GPU figures, says so in ``gpu_note`` and gives their age in ``gpu_age_s``. A transient
NVML error then does not make the GPUs vanish from one sample to the next, and whoever
decides can see how old the figures are and distrust them past some age. The failure is
logged as a warning when its message first appears and once more when reads recover.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from helixd.resources.gpu import GpuDevice, GpuReader, GpuReadError, GpuReading, GpuSelection
from helixd.resources.ram import HostMemory, host_memory, tree_pids_rss

log = logging.getLogger("helixd.resources")

GpuMode = Literal["nvml", "ram-only"]
_NO_GPU = GpuReading(devices=(), process_bytes={})


@dataclass(frozen=True)
class ResourceSample:
    """GPU and RAM figures taken together, at ``taken_at`` (``time.monotonic()``).

    ``gpu_note`` is ``""`` when the GPU figures are fresh NVML figures; in ``ram-only``
    mode it says why there are none, in ``nvml`` mode why they are ``gpu_age_s`` old.
    """

    gpus: tuple[GpuDevice, ...]
    ram: HostMemory
    gpu_mode: GpuMode
    gpu_note: str
    process_gpu_bytes: Mapping[int, Mapping[int, int]]
    taken_at: float
    gpu_age_s: float = 0.0  # seconds between the GPU figures' read and taken_at

    def tree_gpu_bytes(self, pids: Iterable[int]) -> dict[int, int]:
        """GPU bytes held by ``pids`` together, by device index."""
        return sum_process_bytes(self.process_gpu_bytes, pids)


def sum_process_bytes(
    process_bytes: Mapping[int, Mapping[int, int]], pids: Iterable[int]
) -> dict[int, int]:
    """Per device index, the bytes that ``pids`` hold; each pid is counted once."""
    totals: dict[int, int] = {}
    for pid in set(pids):
        for index, used in process_bytes.get(pid, {}).items():
            totals[index] = totals.get(index, 0) + used
    return totals


@dataclass(frozen=True)
class _GpuRead:
    """What one worker-thread GPU read brought back: figures or the error instead."""

    reading: GpuReading | None
    error: str
    at: float


class ResourceMonitor:
    """GPU (NVML) and host RAM figures, and the memory of process trees, for the loop."""

    def __init__(
        self,
        selection: GpuSelection,
        *,
        reader_factory: Callable[[GpuSelection], GpuReader] = GpuReader,
    ) -> None:
        self._reader = reader_factory(selection)
        self._last: GpuReading | None = None  # the last good reading
        self._last_at = 0.0
        self._error = ""  # the current read failure, "" while reads succeed
        self._seen_at = 0.0  # when the newest recorded read finished

    @property
    def mode(self) -> GpuMode:
        """``nvml`` while GPUs are read, ``ram-only`` otherwise (no driver, none selected)."""
        return "nvml" if self._reader.available else "ram-only"

    @property
    def note(self) -> str:
        """Why there are no fresh GPU figures; ``""`` when there are."""
        if self.mode == "ram-only":
            return self._reader.unavailable_reason
        if not self._error:
            return ""
        if self._last is None:
            return f"{self._error}; no GPU figures yet"
        return f"{self._error}; showing the last good GPU figures"

    async def open(self) -> None:
        """Open NVML; raises :class:`GpuSelectionError` for a GPU index that does not exist."""
        await asyncio.to_thread(self._reader.open)
        if self.mode == "nvml":
            log.info("GPU figures from NVML (%d GPU)", len((await self.sample()).gpus))
        else:
            log.info("no GPU figures, scheduling on host RAM only: %s", self.note)

    async def sample(self) -> ResourceSample:
        """GPU and RAM figures, read together in one worker-thread call."""
        gpu, ram = await asyncio.to_thread(self._read_all)
        self._record(gpu)
        last = self._last or _NO_GPU
        return ResourceSample(
            gpus=last.devices,
            ram=ram,
            gpu_mode=self.mode,
            gpu_note=self.note,
            process_gpu_bytes=last.process_bytes,
            taken_at=gpu.at,
            gpu_age_s=gpu.at - self._last_at if self._last is not None else 0.0,
        )

    async def tree_usage(self, pid: int) -> tuple[int, dict[int, int]]:
        """RSS bytes of the tree of ``pid`` and its GPU bytes by device index.

        A failed GPU read falls back to the last good per-process figures, like
        :meth:`sample`.
        """
        pids, rss, gpu = await asyncio.to_thread(self._read_tree, pid)
        self._record(gpu)
        last = self._last or _NO_GPU
        return rss, sum_process_bytes(last.process_bytes, pids)

    async def close(self) -> None:
        """Shut NVML down; later samples carry RAM figures only."""
        await asyncio.to_thread(self._reader.close)
        self._last = None
        self._error = ""

    def _read_gpu(self) -> _GpuRead:
        if not self._reader.available:
            return _GpuRead(_NO_GPU, "", time.monotonic())
        try:
            reading = self._reader.read()
        except GpuReadError as exc:
            return _GpuRead(None, str(exc), time.monotonic())
        return _GpuRead(reading, "", time.monotonic())

    def _read_all(self) -> tuple[_GpuRead, HostMemory]:
        gpu = self._read_gpu()
        return gpu, host_memory()

    def _read_tree(self, pid: int) -> tuple[list[int], int, _GpuRead]:
        # The tree first: a pid that appears after the walk is not counted, one that
        # exits after it holds nothing in the GPU figures read next.
        pids, rss = tree_pids_rss(pid)
        return pids, rss, self._read_gpu()

    def _record(self, gpu: _GpuRead) -> None:
        # Runs on the loop, so the state needs no lock although reads run in threads.
        # Reads may overlap (sample and tree_usage); one that finishes late with older
        # news must not overwrite newer figures or a newer verdict.
        if gpu.at < self._seen_at:
            return
        self._seen_at = gpu.at
        if gpu.reading is not None:
            if self._error:
                log.info("GPU reads work again (after: %s)", self._error)
            self._error = ""
            self._last, self._last_at = gpu.reading, gpu.at
            return
        if gpu.error != self._error:
            log.warning("%s; keeping the last good GPU figures", gpu.error)
        self._error = gpu.error
