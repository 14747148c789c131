"""What the benchmarks share: a user-mode helixd in a temp dir, up and answering."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def running_helixd(
    config: Callable[[Path], str],
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """Start helixd with ``config(root)`` and wait until it answers; stop it afterwards.

    Yields the daemon process and the environment that points ``helixctl`` at it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "helixd.toml").write_text(config(root))
        env = dict(os.environ, HELIXD_SOCKET=str(root / "helixd.sock"))
        daemon = subprocess.Popen(
            [str(BIN / "helixd"), "--user", "--config", str(root / "helixd.toml")], env=env
        )
        try:
            deadline = time.monotonic() + 30
            status = [str(BIN / "helixctl"), "status"]
            while subprocess.run(status, env=env, capture_output=True).returncode != 0:
                if daemon.poll() is not None:
                    sys.exit(f"helixd exited with code {daemon.returncode}")
                if time.monotonic() > deadline:
                    sys.exit("helixd did not answer within 30 s")
                time.sleep(0.1)  # a poll interval, not synchronisation: the loop checks
            yield daemon, env
        finally:
            daemon.terminate()
            daemon.wait(30)
