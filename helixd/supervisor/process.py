"""``ManagedProcess``: one supervised process and its life cycle.

States (DESIGN.md): ``stopped`` → ``starting`` → ``ready`` ⇄ ``unhealthy``; a process that
dies goes to ``backoff`` and starts again, or settles in ``failed`` / ``stopped`` as the
restart policy decides; ``stopping`` while a requested stop is under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from helixd.errors import SupervisionError
from helixd.supervisor import health, spawn
from helixd.supervisor.logs import LogSink, RotatingFile, attach_pipes
from helixd.supervisor.policy import (
    ExitInfo,
    RestartCounters,
    RestartPolicy,
    describe_exit,
    describe_stop,
)
from helixd.supervisor.registry import ChildRegistry
from helixd.supervisor.spec import ProcessSpec

log = logging.getLogger("helixd.supervisor")

# How often a starting process is probed: quickly at first (a small model on llama-server
# is ready in tens of milliseconds, and every model swap waits for this), growing by half
# each time to one probe per quarter second (a refused connect or a 503 costs a fraction
# of a millisecond, and a coarser step would add up to that much to every slow start).
START_PROBE_FIRST_S = 0.01
START_PROBE_MAX_S = 0.25
# A process without a health probe counts as ready once it has survived this long.
NO_PROBE_READY_S = 1.0
GROUP_POLL_S = 0.05
FAILED_LOG_TAIL = 20


class ProcessState(enum.StrEnum):
    """The public process states."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPING = "stopping"


RUNNING_STATES = frozenset({ProcessState.STARTING, ProcessState.READY, ProcessState.UNHEALTHY})
SETTLED_STATES = frozenset({ProcessState.READY, ProcessState.FAILED, ProcessState.STOPPED})


class ProcessClosed(SupervisionError):
    """The process was replaced or removed by a reload; its name may now mean another one."""

    code = "replaced"


# After SIGKILL, how long to wait for the group to vanish before reporting it as stuck
# (a member in uninterruptible sleep, or one helixd may not signal).
KILL_WAIT_S = 10.0


class ManagedProcess:
    """Runs one :class:`ProcessSpec`: spawn, probe, restart with backoff, stop the group."""

    def __init__(
        self,
        spec: ProcessSpec,
        registry: ChildRegistry,
        on_change: Callable[[ManagedProcess], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.state = ProcessState.STOPPED
        self.pid: int | None = None
        self.restarts = 0
        self.health_failures = 0
        self.last_exit: ExitInfo | None = None
        self.message = ""
        self.since = time.time()
        self.ready_since: float | None = None
        self.sink = LogSink(RotatingFile(spec.log_path, spec.log_max_bytes, spec.log_backups))
        self._registry = registry
        self._on_change = on_change
        self._clock = clock
        self._child: spawn.Child | None = None
        self._readers: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._closed = False
        # The probe in use: the spec's, or its fallback once the server answered 404.
        self._probe = spec.health
        # Each start, restart and stop is a new generation; every state is stamped with the
        # generation it was reached in. A wait for the outcome of a start settles only on a
        # state of that start's generation or a later one, never on an earlier outcome (the
        # `failed` a start from `failed` is meant to replace) still showing when it begins.
        self._generation = 0
        self._state_generation = 0
        # When the latest start began: a failure's log tail shows that start's lines only.
        self._run_began = 0.0
        # The signals helixd sent the current child: any other death is not helixd's doing.
        self._signalled: set[int] = set()

    # -- public operations -------------------------------------------------------------

    async def start(self) -> int:
        """Start supervising (no-op while it already runs). Counters of a past failure reset.

        Returns the generation whose outcome :meth:`wait_settled` should wait for: this
        start's, or the running one's when it already runs.
        """
        async with self._lock:
            self._check_open()
            if self._task is not None and not self._task.done():
                return self._generation
            return self._new_run()

    async def stop(self) -> None:
        """Stop the process and its whole group: stop signal, grace, then SIGKILL."""
        async with self._lock:
            await self._stop_locked()

    async def restart(self) -> int:
        """Stop, then start again; returns the new start's generation (see :meth:`start`)."""
        async with self._lock:
            self._check_open()
            await self._stop_locked()
            return self._new_run()

    def _new_run(self) -> int:
        self._generation += 1
        self._run_began = time.time()
        self._task = asyncio.create_task(self._run(), name=f"process:{self.spec.name}")
        return self._generation

    def _check_open(self) -> None:
        if self._closed:
            raise ProcessClosed(f"{self.spec.name} was just replaced by a reload; try again")

    async def wait_spawned(self, generation: int | None = None) -> None:
        """Wait until a just-started process has left its old state (spawned, or failed to)."""
        wanted = self._generation if generation is None else generation
        while self._state_generation < wanted:
            await self._changed.wait()

    async def wait_settled(self, timeout: float, generation: int | None = None) -> ProcessState:
        """Wait until the process is ready, failed or stopped (or ``timeout`` passes).

        Only a state reached by ``generation`` (what :meth:`start` or :meth:`restart`
        returned; default: the latest) or a later one counts: a start from ``failed``
        waits for its own outcome, not the failure it is replacing.
        """
        wanted = self._generation if generation is None else generation
        deadline = self._clock() + timeout
        while self.state not in SETTLED_STATES or self._state_generation < wanted:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()
        return self.state

    def info(self) -> dict[str, Any]:
        """The control API's view of this process."""
        exit_info = None
        if self.last_exit is not None:
            exit_info = {
                "code": self.last_exit.code,
                "signal": self.last_exit.signal,
                "reason": self.last_exit.reason,
                "description": describe_exit(self.last_exit),
            }
        now = time.time()
        data: dict[str, Any] = {
            "name": self.spec.name,
            "kind": self.spec.kind,
            "state": str(self.state),
            "pid": self.pid,
            "port": self.spec.port,
            "restarts": self.restarts,
            "since": self.since,
            "uptime_s": (now - self.ready_since) if self.ready_since is not None else None,
            "health_failures": self.health_failures,
            "message": self.message,
            "last_exit": exit_info,
            "autostart": self.spec.autostart,
            "command": list(self.spec.argv),
            "log_file": str(self.spec.log_path),
        }
        if self.state == ProcessState.FAILED:
            tail = self.sink.tail(FAILED_LOG_TAIL)
            data["log_tail"] = [line.text for line in tail if line.ts >= self._run_began]
        return data

    def close(self) -> None:
        """Release the log file and end log followers (after :meth:`stop`); no more starts."""
        self._closed = True
        self.sink.close()

    def keep_stopped(self, why: str) -> None:
        """Stay stopped, saying why (an operator's stop outlives a helixd restart)."""
        if self.state == ProcessState.STOPPED:
            self._set(ProcessState.STOPPED, why)

    # -- state -------------------------------------------------------------------------

    def _set(self, state: ProcessState, message: str = "") -> None:
        generation = self._generation
        if state == self.state and message == self.message and generation == self._state_generation:
            return
        if state != self.state:
            self.since = time.time()
            log.info(
                "%s: %s → %s%s",
                self.spec.name,
                self.state,
                state,
                f" ({message})" if message else "",
            )
        self.state = state
        self.message = message
        self._state_generation = generation
        if state == ProcessState.READY and self.ready_since is None:
            self.ready_since = time.time()
        elif state not in (ProcessState.READY, ProcessState.UNHEALTHY):
            self.ready_since = None
        if message:
            self.sink.emit("helixd", f"{state}: {message}")
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self._on_change is not None:
            self._on_change(self)

    # -- the run loop ------------------------------------------------------------------

    def _policy(self) -> RestartPolicy:
        s = self.spec
        return RestartPolicy(
            s.restart,
            s.start_retries,
            s.backoff_initial_s,
            s.backoff_max_s,
            s.backoff_reset_s,
            one_run=s.one_run,
        )

    async def _run(self) -> None:
        try:
            await self._run_loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug here must not leave a child running that nobody watches.
            log.exception("%s: supervision failed", self.spec.name)
            child = self._child
            if child is not None:
                with contextlib.suppress(Exception):
                    await self._terminate(child, asyncio.create_task(spawn.wait_exit(child)))
                self._forget_child(child)
            self._set(ProcessState.FAILED, f"internal error in helixd: {exc!r}; see its log")

    async def _run_loop(self) -> None:
        policy = self._policy()
        counters = RestartCounters()
        while True:
            self.health_failures = 0
            self._set(ProcessState.STARTING, "")
            try:
                child = spawn.spawn(self.spec)
            except spawn.SpawnError as exc:
                self.sink.emit("helixd", f"spawn failed: {exc}")
                exit_info, became_ready, ran_for = ExitInfo(None, None, "spawn-error"), False, 0.0
                self.message = str(exc)
            else:
                exit_info, became_ready, ran_for = await self._supervise(child)
            self.last_exit = exit_info
            decision = policy.after_exit(exit_info, counters, became_ready, ran_for)
            counters = decision.counters
            if decision.action != "restart":
                detail = decision.why
                if exit_info.reason == "spawn-error" and self.message:
                    detail = f"{self.message}; {decision.why}"
                self._set(
                    ProcessState.FAILED if decision.action == "failed" else ProcessState.STOPPED,
                    detail,
                )
                return
            self._set(
                ProcessState.BACKOFF,
                f"{decision.why}; restarting in {decision.delay_s:.1f} s",
            )
            await asyncio.sleep(decision.delay_s)
            self.restarts += 1

    async def _supervise(self, child: spawn.Child) -> tuple[ExitInfo, bool, float]:
        """Watch one run of the child until it ends; return how, whether ready, for how long."""
        self._child = child
        self.pid = child.pid
        self._signalled = set()
        self._registry.add(self.spec.name, child)
        self.sink.emit("helixd", f"started pid {child.pid}: {' '.join(self.spec.argv)}")
        attach_pipes(self.sink, child.popen)
        exit_task = asyncio.create_task(spawn.wait_exit(child))
        try:
            tally = health.ProbeTally()
            became_ready = await self._until_ready(exit_task, tally)
            if not became_ready:
                if exit_task.done():
                    return self._exit_info(exit_task.result(), "exited"), False, 0.0
                probed = tally.summary(self._probe, self.spec.port)
                self.sink.emit("helixd", f"not ready after {self.spec.start_seconds:g} s: {probed}")
                code = await self._terminate(child, exit_task)
                exit_info = self._exit_info(code, "start-timeout")
                return dataclasses.replace(exit_info, detail=probed), False, 0.0
            ready_at = self._clock()
            reason = await self._while_ready(exit_task)
            if reason == "unhealthy":
                code = await self._terminate(child, exit_task)
            else:
                code = exit_task.result()
                self.pid = None  # never show a dead pid as the ready process
                self._set(ProcessState.STOPPING, describe_exit(self._exit_info(code, reason)))
                await self._reap_group(child, self.spec.stop_timeout_s)
            return self._exit_info(code, reason), True, self._clock() - ready_at
        finally:
            if not exit_task.done():
                exit_task.cancel()
            if self._child is child and child.popen.returncode is not None:
                self._forget_child(child)

    async def _until_ready(self, exit_task: asyncio.Task[int], tally: health.ProbeTally) -> bool:
        deadline = self._clock() + self.spec.start_seconds
        # Each run starts from the configured path; a fallback is found again if needed.
        self._probe = probe = self.spec.health
        wait_s = START_PROBE_FIRST_S
        if probe.kind == "none":
            done, _ = await asyncio.wait(
                {exit_task}, timeout=min(NO_PROBE_READY_S, self.spec.start_seconds)
            )
            if done:
                return False
            self._set(ProcessState.READY, "")
            return True
        while True:
            result = await health.probe(self._probe, self.spec.host, self.spec.port)
            if exit_task.done():
                return False
            tally.add(result, self._probe.path)
            if result.ok:
                self._set(ProcessState.READY, "")
                return True
            if self._fall_back(result):
                continue  # ask the fallback path at once: the server is up
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            done, _ = await asyncio.wait({exit_task}, timeout=min(wait_s, remaining))
            if done:
                return False
            wait_s = min(START_PROBE_MAX_S, wait_s * 1.5)

    def _fall_back(self, result: health.ProbeResult) -> bool:
        """Switch to the kind's fallback path when the server says it has no health path."""
        probe = self._probe
        if result.status != 404 or probe.fallback_path in (None, probe.path):
            return False
        self.sink.emit(
            "helixd",
            f"GET {probe.path} answered HTTP 404: this server has no {probe.path}; "
            f"probing GET {probe.fallback_path} instead",
        )
        self._probe = dataclasses.replace(probe, path=probe.fallback_path)
        return True

    async def _while_ready(self, exit_task: asyncio.Task[int]) -> str:
        """Probe at the configured interval until the process exits or fails N probes."""
        probe = self._probe
        while True:
            done, _ = await asyncio.wait(
                {exit_task}, timeout=probe.interval_s if probe.kind != "none" else None
            )
            if done:
                return "exited"
            result = await health.probe(probe, self.spec.host, self.spec.port)
            if exit_task.done():
                return "exited"
            if result.ok:
                if self.health_failures:
                    self.health_failures = 0
                    self._set(ProcessState.READY, "")
                continue
            self.health_failures += 1
            message = (
                f"health check failed {self.health_failures}/{probe.failures}: {result.detail}"
            )
            self._set(ProcessState.UNHEALTHY, message)
            if self.health_failures >= probe.failures:
                return "unhealthy"

    def _exit_info(self, returncode: int, reason: str) -> ExitInfo:
        if returncode < 0:
            return ExitInfo(None, -returncode, reason)
        return ExitInfo(returncode, None, reason)

    # -- stopping ----------------------------------------------------------------------

    async def _stop_locked(self) -> None:
        self._generation += 1
        task, self._task = self._task, None
        child = self._child
        if task is not None:
            await _cancel_and_wait(task)
        if child is None:
            self._set(ProcessState.STOPPED, "")
            return
        # Whether the leader had ended before this stop reached it (a kill -9 from outside,
        # the OOM killer, a crash the run loop was still handling): that is its own doing,
        # and its note must say so, not "stopped on request".
        ended_before = spawn.has_ended(child)
        if ended_before:
            self._set(ProcessState.STOPPING, "it had ended; stopping what is left of its group")
            code = await spawn.wait_exit(child)  # reaped, or a zombie: at once either way
            # The leader is gone already (its pid may be reused): only its group is left.
            await self._reap_group(child, self.spec.stop_timeout_s)
        else:
            self._set(ProcessState.STOPPING, f"sending {self.spec.stop_signal.name} to the group")
            code = await self._terminate(child, asyncio.create_task(spawn.wait_exit(child)))
        self.last_exit = describe_stop(
            code,
            ended_before=ended_before,
            sent=frozenset(self._signalled),
            stop_signal=self.spec.stop_signal,
            grace_s=self.spec.stop_timeout_s,
        )
        self._forget_child(child)
        self._set(ProcessState.STOPPED, describe_exit(self.last_exit))

    async def _terminate(self, child: spawn.Child, exit_task: asyncio.Task[int]) -> int:
        """Stop signal to the group, wait up to stop_timeout_s, then SIGKILL what is left."""
        grace = self.spec.stop_timeout_s
        escaped = await asyncio.to_thread(spawn.descendants, child.pid)
        started = self._clock()
        self._signalled.add(self.spec.stop_signal)
        spawn.signal_group(child.pgid, self.spec.stop_signal)
        done, _ = await asyncio.wait({exit_task}, timeout=grace)
        if done:
            await self._reap_group(child, max(0.0, grace - (self._clock() - started)), escaped)
        else:
            self.sink.emit(
                "helixd", f"still running after {grace:g} s; sending SIGKILL to the group"
            )
            self._signalled.add(signal.SIGKILL)
            spawn.signal_group(child.pgid, signal.SIGKILL)
            spawn.kill_all(escaped, signal.SIGKILL)
            await self._reap_group(child, 0.0, escaped)
        return await exit_task

    async def _reap_group(
        self, child: spawn.Child, grace: float, escaped: list[Any] | None = None
    ) -> None:
        """Make sure nothing of the child's group outlives it: the port and GPU must be free."""
        deadline = self._clock() + grace
        signalled = killed_at = None
        while True:
            found = await asyncio.to_thread(spawn.group_members, child.pgid)
            found += [p for p in escaped or () if spawn.alive(p)]
            members = list({p.pid: p for p in found}.values())
            if not members:
                return
            if signalled is None and grace > 0:
                # The leader is gone but its group is not: ask the rest to leave too.
                spawn.signal_group(child.pgid, self.spec.stop_signal)
                signalled = self._clock()
            now = self._clock()
            if killed_at is None and now >= deadline:
                pids = ", ".join(str(p.pid) for p in members)
                self.sink.emit("helixd", f"killing leftover processes of the group: {pids}")
                spawn.signal_group(child.pgid, signal.SIGKILL)
                spawn.kill_all(members, signal.SIGKILL)
                killed_at = now
            elif killed_at is not None and now - killed_at > KILL_WAIT_S:
                # Uninterruptible sleep (a hung driver call) or not ours to signal: polling
                # forever would hang every stop and the daemon's shutdown with it.
                pids = ", ".join(str(p.pid) for p in members)
                message = f"processes {pids} survived SIGKILL for {KILL_WAIT_S:g} s; giving up"
                log.error("%s: %s", self.spec.name, message)
                self.sink.emit("helixd", message)
                return
            await asyncio.sleep(GROUP_POLL_S)

    def _forget_child(self, child: spawn.Child) -> None:
        self._registry.remove(self.spec.name)
        self._child = None
        self.pid = None


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again should it swallow one.

    Code the run loop awaits (a library, a future refactor) may absorb a CancelledError;
    a stop must not then wait forever on a loop that carries on.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        log.error("supervision task ended with %r", task.exception())
