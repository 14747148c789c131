"""Commands the jobs run: argv without a shell, in their own process group, bounded.

What a command leaves running in its group is stopped when it exits; the whole group
is killed on a timeout or when the job is cancelled; children die with helixd.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import re
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from helixd.config import ProviderConfig
from helixd.jobs.base import JobContext
from helixd.supervisor.spawn import child_setup, group_members, signal_group, why_not_started
from helixd.supervisor.spec import LOOPBACK, provider_env

log = logging.getLogger("helixd.jobs")

OUTPUT_TAIL_LINES = 20
MAX_LINE_CHARS = 2000
# A command's group gets SIGTERM, then SIGKILL after this long.
TERM_GRACE_S = 5.0
KILL_WAIT_S = 10.0
GROUP_POLL_S = 0.05

# -- commands ----------------------------------------------------------------------------


@dataclass
class CommandResult:
    """How one command ended: exit code (None: never started, or killed), output tail."""

    code: int | None
    tail: list[str]
    first_stdout: str = ""
    error: str = ""
    # False when it could not be started at all: nothing it would do was done.
    started: bool = True

    @property
    def ok(self) -> bool:
        """Exited 0 on its own."""
        return self.code == 0 and not self.error

    def describe(self) -> str:
        """``exit 1``, ``timed out after 5 s``, ``command not found: …``."""
        return self.error or f"exit {self.code}"


class _Output:
    """The last lines of stdout and stderr together, and stdout's first non-empty line."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        self.first_stdout = ""

    async def read(self, stream: asyncio.StreamReader, is_stdout: bool) -> None:
        # Chunks, not readline: a progress bar redrawn with \r is one endless "line".
        pending, decoder = "", codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := await stream.read(65536):
            *complete, pending = re.split(r"[\r\n]", pending + decoder.decode(chunk))
            for line in complete:
                self._add(line, is_stdout)
            pending = pending[-MAX_LINE_CHARS:]
        self._add(pending, is_stdout)

    def _add(self, line: str, is_stdout: bool) -> None:
        line = line.strip()[:MAX_LINE_CHARS]
        if line:
            self.lines.append(line)
            if is_stdout and not self.first_stdout:
                self.first_stdout = line


async def run_command(
    argv: Sequence[str], env: dict[str, str], cwd: Path | None, timeout: float
) -> CommandResult:
    """Run ``argv`` in its own process group; kill the group on timeout or cancellation."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=child_setup(os.getpid()),
        )
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        why = why_not_started(exc, argv[0], cwd, env)
        return CommandResult(None, [], error=why, started=False)
    output = _Output()
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        asyncio.create_task(output.read(proc.stdout, True)),
        asyncio.create_task(output.read(proc.stderr, False)),
    ]
    error = ""
    try:
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            error = f"timed out after {timeout:g} s, killed"
        # What is left of its group (the command on a timeout, or what it started and
        # left behind) would hold the pipes open and outlive the job: end it.
        await end_group(proc.pid)
        await proc.wait()
        await asyncio.wait(readers, timeout=KILL_WAIT_S)
    except asyncio.CancelledError:
        signal_group(proc.pid, signal.SIGKILL)  # the job's own timeout: nothing may stay
        raise
    finally:
        for reader in readers:
            reader.cancel()
    code = None if error else proc.returncode
    return CommandResult(code, list(output.lines), output.first_stdout, error)


async def end_group(pgid: int) -> None:
    """SIGTERM the group, SIGKILL it after a grace, and wait until no member is left."""
    loop = asyncio.get_running_loop()
    for sig, wait_s in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, KILL_WAIT_S)):
        if not await _group_alive(pgid):
            return
        signal_group(pgid, sig)
        deadline = loop.time() + wait_s
        while loop.time() < deadline and await _group_alive(pgid):
            await asyncio.sleep(GROUP_POLL_S)
    if await _group_alive(pgid):
        log.error("process group %d survived SIGKILL (uninterruptible sleep?)", pgid)


async def _group_alive(pgid: int) -> bool:
    # killpg(0) is cheap but counts zombies; psutil tells the live members.
    return signal_group(pgid, 0) and bool(await asyncio.to_thread(group_members, pgid))


def command_env(
    ctx: JobContext, name: str, provider: ProviderConfig
) -> tuple[dict[str, str], Path | None]:
    """The environment and working directory of the provider's server, for its commands."""
    process = ctx.supervisor.processes.get(name)
    if process is not None:
        # Exactly what its server runs with (OLLAMA_HOST lets `ollama -v` find it).
        return dict(process.spec.env), process.spec.cwd
    # Process per model: the environment its model processes get, less the model's part.
    values = {"name": name, "host": LOOPBACK, "python": sys.executable}
    values |= {"state_dir": str(ctx.paths.state_dir), "log_dir": str(ctx.paths.log_dir)}
    return provider_env(provider, values), provider.cwd


# -- one provider ----------------------------------------------------------------------------
