"""Benchmark: ``helixctl status`` as a whole process, against baselines measured in the same run.

Starts a user-mode helixd with the echo provider in a temp dir, then times N runs each of:
  - ``python -c pass``        the interpreter's own start-up: the floor nobody can go under
  - ``python -c "import click, http.client, json"``  what a naive click + http.client CLI pays
                                                     before it does anything
  - ``helixctl status``       the real command against the live daemon
and prints medians and ratios. The design's target is a median of 60 ms or less for
``helixctl status`` (``supervisorctl status`` takes about 90 ms on the reference machine).

Run: ``.venv/bin/python bench/helixctl_status.py [--runs 40]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import BIN, running_helixd


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples.append((time.perf_counter() - started) * 1000)
        if result.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed: {result.stderr.decode()}")
    return samples


def _config(root: Path) -> str:
    return (
        f'[daemon]\nsocket = "{root}/helixd.sock"\nstate_dir = "{root}/state"\n'
        f'log_dir = "{root}/logs"\n\n[proxy]\nlisten = "127.0.0.1:0"\n\n'
        '[providers.echo]\nkind = "echo"\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    with running_helixd(_config) as (_, env):
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import click, http.client, json'": [
                sys.executable,
                "-c",
                "import click, http.client, json",
            ],
            "helixctl status": [str(BIN / "helixctl"), "status"],
        }
        timed(cases["helixctl status"], env, 3)  # warm the page cache
        medians = {
            name: statistics.median(timed(argv, env, args.runs)) for name, argv in cases.items()
        }
    floor = medians["python -c pass"]
    print(f"{'case':48} {'median ms':>10} {'x python':>9}")
    for name, value in medians.items():
        print(f"{name:48} {value:10.1f} {value / floor:9.2f}")
    target = 60.0
    verdict = "meets" if medians["helixctl status"] <= target else "MISSES"
    print(
        f"helixctl status median {medians['helixctl status']:.1f} ms {verdict} the "
        f"{target:.0f} ms target ({args.runs} runs)"
    )


if __name__ == "__main__":
    main()
