"""Benchmark: what one access-log line costs helixd, set up as helixd sets up its logging.

Times ``--lines`` access-log lines written through ``logging`` exactly as the endpoint
writes them (same logger, format and arguments; the handler ``helixd`` installs, writing
to a file as journald's pipe would take them), against the same loop that formats
nothing, and prints the microseconds per line. ``[proxy] access_log = false`` or
``access_log_sample`` saves this much per request they leave out.

Run: ``.venv/bin/python bench/access_log_cost.py [--lines 200000]``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

from helixd.cli import _setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryFile("w") as sink:
        saved = sys.stderr
        sys.stderr = sink  # helixd logs to stderr (journald's pipe under systemd)
        try:
            _setup_logging("info")
        finally:
            sys.stderr = saved
        access = logging.getLogger("helixd.access")
        fmt = "%s %s asked=%s route=%s model=%s attempts=%d status=%d ms=%.1f ttft_ms=%s%s"
        arguments = ("POST", "/v1/chat/completions", "m", "-", "m", 1, 200, 0.4, "0.3", "")
        rounds = []
        for _ in range(5):  # interleaved, medians: both loops see the same machine state
            started = time.perf_counter()
            for _ in range(args.lines):
                pass
            bare = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(args.lines):
                access.info(fmt, *arguments)
            logged = time.perf_counter() - started
            rounds.append((logged - bare) / args.lines * 1e6)
        size = os.fstat(sink.fileno()).st_size
    rounds.sort()
    print(
        f"access log: {rounds[len(rounds) // 2]:.1f} us per line (median of 5 rounds of "
        f"{args.lines}; min {rounds[0]:.1f}, max {rounds[-1]:.1f}); {size / (5 * args.lines):.0f}"
        " bytes a line"
    )


if __name__ == "__main__":
    main()
