"""The record of running children's process groups, kept in the state dir.

If helixd is SIGKILLed, its direct children die with it (PDEATHSIG), but grandchildren
do not. The next helixd reads this record before it starts anything and kills whatever
is left of those groups, so no orphan keeps a GPU or a port. A record is trusted only
within the same boot and only while the group leader's start time (or, once the leader
is gone, the group id) still matches: pids are reused.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

import psutil

from helixd.state import atomic_write_json, boot_id, read_json
from helixd.supervisor.spawn import Child, group_members

log = logging.getLogger("helixd.supervisor")

RECORD_FILE = "children.json"


class ChildRegistry:
    """Persists ``name → {pid, pgid, create_time}`` for the children alive right now."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / RECORD_FILE
        self._children: dict[str, dict[str, Any]] = {}
        self._boot_id = boot_id()

    def add(self, name: str, child: Child) -> None:
        """Record a freshly spawned child (before anything else can go wrong)."""
        self._children[name] = {
            "pid": child.pid,
            "pgid": child.pgid,
            "create_time": child.create_time,
        }
        self._save()

    def remove(self, name: str) -> None:
        """Forget a child whose whole group is gone."""
        if self._children.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        try:
            atomic_write_json(self.path, {"boot_id": self._boot_id, "children": self._children})
        except OSError as exc:
            log.warning("cannot record children in %s: %s", self.path, exc)

    def clean_up_leftovers(self, grace_s: float = 5.0) -> list[str]:
        """Kill what an earlier helixd left behind; return ``name (pids)`` for each group.

        Blocking (psutil walks, a bounded wait): call it from a thread or before the loop.
        """
        record = read_json(self.path, {})
        cleaned: list[str] = []
        if not isinstance(record, dict) or record.get("boot_id") != self._boot_id:
            self._save()
            return cleaned
        for name, entry in dict(record.get("children") or {}).items():
            try:
                pgid, pid, started = (
                    int(entry["pgid"]),
                    int(entry["pid"]),
                    float(entry["create_time"]),
                )
            except (KeyError, TypeError, ValueError):
                continue
            if _group_id_reused(pgid, started):
                continue
            members = [p for p in group_members(pgid) if _belongs(p, pid, started)]
            if not members:
                continue
            pids = [p.pid for p in members]
            log.warning(
                "killing %d leftover process(es) of %s from an earlier helixd: %s",
                len(pids),
                name,
                ", ".join(map(str, pids)),
            )
            _terminate(members, grace_s)
            cleaned.append(f"{name} ({', '.join(map(str, pids))})")
        self._save()
        return cleaned


def _group_id_reused(pgid: int, leader_started: float) -> bool:
    """True when a process with the group's id exists but is not our leader: a new group."""
    try:
        return bool(abs(psutil.Process(pgid).create_time() - leader_started) >= 1.0)
    except psutil.Error:
        return False


def _belongs(proc: psutil.Process, leader_pid: int, leader_started: float) -> bool:
    """A group member is ours if it is the same leader, or was born after our leader was."""
    with contextlib.suppress(psutil.Error):
        if proc.pid == leader_pid:
            return bool(abs(proc.create_time() - leader_started) < 1.0)
        return bool(proc.create_time() >= leader_started - 1.0)
    return False


def _terminate(members: list[psutil.Process], grace_s: float) -> None:
    for proc in members:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5.0)
