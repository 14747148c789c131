"""``Supervisor``: the set of managed processes, started, stopped and reloaded together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from helixd.supervisor.process import ManagedProcess
from helixd.supervisor.registry import ChildRegistry
from helixd.supervisor.spec import ProcessSpec

log = logging.getLogger("helixd.supervisor")


@dataclass
class ReloadChanges:
    """What a reload did, by process name."""

    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, list[str]]:
        """The control API's shape."""
        return {
            "started": self.started,
            "stopped": self.stopped,
            "restarted": self.restarted,
            "unchanged": self.unchanged,
        }


class UnknownProcess(KeyError):
    """A name that is not configured."""


class Supervisor:
    """Owns every :class:`ManagedProcess`; the daemon talks to processes through it."""

    def __init__(
        self,
        registry: ChildRegistry,
        on_change: Callable[[ManagedProcess], None] | None = None,
    ) -> None:
        self.registry = registry
        self.processes: dict[str, ManagedProcess] = {}
        self._on_change = on_change

    def get(self, name: str) -> ManagedProcess:
        """The process called ``name``; :class:`UnknownProcess` names the configured ones."""
        try:
            return self.processes[name]
        except KeyError:
            known = ", ".join(sorted(self.processes)) or "none"
            raise UnknownProcess(f"no provider named {name!r}; configured: {known}") from None

    def add(self, spec: ProcessSpec) -> ManagedProcess:
        """Manage ``spec`` (not started yet)."""
        process = ManagedProcess(spec, self.registry, self._on_change)
        self.processes[spec.name] = process
        return process

    async def start_autostart(self) -> None:
        """Start every autostart process and return once each has been spawned."""
        started = [p for p in self.processes.values() if p.spec.autostart]
        for process in started:
            await process.start()
        for process in started:
            await process.wait_spawned()

    async def stop_all(self) -> None:
        """Stop everything in parallel, each within its own grace."""
        await asyncio.gather(*(p.stop() for p in self.processes.values()))
        for process in self.processes.values():
            process.close()

    async def apply(self, specs: Mapping[str, ProcessSpec]) -> ReloadChanges:
        """Move to ``specs``: untouched if equal, restarted if changed, stopped if gone."""
        changes = ReloadChanges()
        removed = [name for name in self.processes if name not in specs]
        await asyncio.gather(*(self.processes[name].stop() for name in removed))
        for name in removed:
            self.processes.pop(name).close()
            changes.stopped.append(name)
        for name, spec in specs.items():
            current = self.processes.get(name)
            if current is None:
                process = self.add(spec)
                if spec.autostart:
                    await process.start()
                changes.started.append(name)
            elif current.spec == spec:
                changes.unchanged.append(name)
            else:
                was_running = current.state != "stopped" or spec.autostart
                await current.stop()
                current.close()
                process = self.add(spec)
                process.restarts = current.restarts
                # Keep the recent output: why it was restarted is often in there.
                process.sink.ring.extend(current.sink.ring)
                if was_running:
                    await process.start()
                changes.restarted.append(name)
        log.info("reload: %s", changes.as_json())
        return changes
