"""Host memory and the resident memory of process trees, through psutil.

Everything here blocks on ``/proc`` reads; the monitor calls it from a worker thread.
Process trees are walked afresh on every call because model servers fork workers (vLLM's
engine core, Ollama's runners) whose memory belongs to the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class HostMemory:
    """Host RAM in bytes; ``available`` is what can be had without swapping (MemAvailable)."""

    total_bytes: int
    available_bytes: int


def host_memory() -> HostMemory:
    """The host's RAM now."""
    memory = psutil.virtual_memory()
    return HostMemory(total_bytes=int(memory.total), available_bytes=int(memory.available))


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its living descendants, ``pid`` first; ``[]`` if it is gone."""
    return [process.pid for process in _tree(pid)]


def tree_rss_bytes(pid: int) -> int:
    """Resident memory summed over the tree of ``pid``; 0 if it is gone."""
    return tree_pids_rss(pid)[1]


def tree_pids_rss(pid: int) -> tuple[list[int], int]:
    """The pids of the tree of ``pid`` and their summed RSS, from one walk.

    RSS counts pages shared between processes (forked workers, a memory-mapped model
    file) once per process, so the sum can exceed what the tree costs; it never falls
    short, which is the safe side for deciding what fits.
    """
    pids: list[int] = []
    total = 0
    for process in _tree(pid):
        try:
            total += int(process.memory_info().rss)
        except psutil.Error:
            continue  # exited (or became unreadable) since the walk: it holds nothing now
        pids.append(process.pid)
    return pids, total


def _tree(pid: int) -> list[Any]:
    if pid <= 0:  # psutil.Process(0) is the kernel's idle task on Linux, never a child
        return []
    try:
        root = psutil.Process(pid)
        if not _alive(root):
            return []
        descendants = root.children(recursive=True)
    except psutil.Error:  # NoSuchProcess, ZombieProcess, AccessDenied
        return []
    return [root, *(child for child in descendants if _alive(child))]


def _alive(process: Any) -> bool:
    # A zombie has exited: its memory, GPU memory included, is already freed.
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
