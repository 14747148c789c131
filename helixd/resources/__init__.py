"""GPU and RAM figures and per-process GPU memory; no decisions are made here.

``GpuReader`` reads NVML, ``ram`` reads psutil, and ``ResourceMonitor`` combines both for
the event loop, running every blocking read in a worker thread.
"""

from __future__ import annotations

from helixd.resources.gpu import (
    GpuDevice,
    GpuReader,
    GpuReadError,
    GpuReading,
    GpuSelection,
    GpuSelectionError,
)
from helixd.resources.monitor import GpuMode, ResourceMonitor, ResourceSample, sum_process_bytes
from helixd.resources.ram import HostMemory, host_memory, process_tree, tree_rss_bytes

__all__ = [
    "GpuDevice",
    "GpuMode",
    "GpuReadError",
    "GpuReader",
    "GpuReading",
    "GpuSelection",
    "GpuSelectionError",
    "HostMemory",
    "ResourceMonitor",
    "ResourceSample",
    "host_memory",
    "process_tree",
    "sum_process_bytes",
    "tree_rss_bytes",
]
