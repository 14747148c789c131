"""``Supervisor``: the set of managed processes, started, stopped and reloaded together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from helixd.errors import SupervisionError
from helixd.hub import Hub
from helixd.supervisor.process import ManagedProcess, ProcessState
from helixd.supervisor.registry import ChildRegistry
from helixd.supervisor.spec import ProcessSpec

log = logging.getLogger("helixd.supervisor")


@dataclass
class ReloadChanges:
    """What a reload did, by process name."""

    started: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)  # new, but autostart = false
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, list[str]]:
        """The control API's shape."""
        return {
            "started": self.started,
            "added": self.added,
            "stopped": self.stopped,
            "restarted": self.restarted,
            "unchanged": self.unchanged,
        }


class UnknownProcess(SupervisionError, KeyError):
    """A name that is not configured."""

    code = "unknown_provider"


class Supervisor:
    """Owns every :class:`ManagedProcess`; the daemon talks to processes through it."""

    def __init__(self, registry: ChildRegistry) -> None:
        self.registry = registry
        self._processes: dict[str, ManagedProcess] = {}
        # Each process whose state changed, for any number of subscribers (the daemon's
        # STATUS=, alerts, one-server adapters, the live view).
        self.events: Hub[ManagedProcess] = Hub("helixd.supervisor")
        # Held by whoever changes which processes exist or run (reload, API operations).
        self.lock = asyncio.Lock()

    @property
    def processes(self) -> Mapping[str, ManagedProcess]:
        """Every managed process by name, in config order (read-only: the supervisor alone
        adds and removes them, on reload)."""
        return MappingProxyType(self._processes)

    def get(self, name: str) -> ManagedProcess:
        """The process called ``name``; :class:`UnknownProcess` names the configured ones."""
        try:
            return self._processes[name]
        except KeyError:
            known = ", ".join(sorted(self._processes)) or "none"
            raise UnknownProcess(f"no provider named {name!r}; configured: {known}") from None

    def add(self, spec: ProcessSpec) -> ManagedProcess:
        """Manage ``spec`` (not started yet)."""
        process = ManagedProcess(spec, self.registry, self.events.emit)
        self._processes[spec.name] = process
        return process

    async def start_autostart(self, skip: set[str] | frozenset[str] = frozenset()) -> None:
        """Start every autostart process not in ``skip``; return once each has been spawned."""
        started = [
            p for p in self._processes.values() if p.spec.autostart and p.spec.name not in skip
        ]
        for process in started:
            await process.start()
        for process in started:
            await process.wait_spawned()

    async def stop_all(self) -> None:
        """Stop everything in parallel, each within its own grace."""
        await asyncio.gather(*(p.stop() for p in self._processes.values()))
        for process in self._processes.values():
            process.close()

    async def apply(
        self,
        specs: Mapping[str, ProcessSpec],
        keep_stopped: set[str] | frozenset[str] = frozenset(),
    ) -> ReloadChanges:
        """Move to ``specs``: untouched if equal, restarted if changed, stopped if gone.

        ``keep_stopped`` names providers an operator stopped: they stay stopped.
        """
        changes = ReloadChanges()
        removed = [name for name in self._processes if name not in specs]
        await asyncio.gather(*(self._processes[name].stop() for name in removed))
        for name in removed:
            self._processes.pop(name).close()
            changes.stopped.append(name)
        changed = [
            name
            for name, spec in specs.items()
            if name in self._processes and self._processes[name].spec != spec
        ]
        # Which changed ones to bring back: those that were meant to run. A provider the
        # user stopped stays stopped; a failed one gets another chance with the new config.
        bring_back = {
            name
            for name in changed
            if self._processes[name].state != ProcessState.STOPPED
            or (specs[name].autostart and name not in keep_stopped)
        }
        await asyncio.gather(*(self._processes[name].stop() for name in changed))
        for name, spec in specs.items():
            current = self._processes.get(name)
            if current is None:
                process = self.add(spec)
                if spec.autostart:
                    await process.start()
                    changes.started.append(name)
                else:
                    changes.added.append(name)
            elif name not in changed:
                changes.unchanged.append(name)
            else:
                current.close()
                process = self.add(spec)
                process.restarts = current.restarts
                # Keep the recent output: why it was restarted is often in there.
                process.sink.ring.extend(current.sink.ring)
                if name in bring_back:
                    await process.start()
                changes.restarted.append(name)
        log.info("reload: %s", changes.as_json())
        return changes
