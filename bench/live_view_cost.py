"""Benchmark: what an open live view costs the endpoint.

Starts a user-mode helixd whose model ``m`` is the echo server, loads it, and measures the
endpoint in interleaved rounds, half of them with nobody watching and half with watchers
following the live feed the way the page and ``helixctl top`` do: one reader of the page's
server-sent events (``/ui/api/events``) and one of the control API's ``/v1/events``, each
its own process reading every byte. Every proxied request is then a record on both
streams, and every change a snapshot. Printed: latency p50/p99 at concurrency 1,
throughput at concurrency 32, helixd's CPU per request, each without and with watchers,
and their ratios; the watchers' bytes show that they were fed.

Run: ``.venv/bin/python bench/live_view_cost.py [--requests 2000] [--control]``; with
``--control`` no watcher is opened at all, so its ratios are the run-to-run noise the
watched ratios are to be read against.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import psutil
from common import running_helixd
from proxy_overhead import CHAT, concurrent, config, ctl, one, pct

# A watcher: reads a stream to its end, printing how many bytes it got.
WATCHER = """
import signal, socket, sys
total = 0
def done(*_):
    print(total, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
kind, target = sys.argv[1], sys.argv[2]
if kind == "unix":
    s = socket.socket(socket.AF_UNIX)
    s.connect(target)
    s.sendall(b"GET /v1/events HTTP/1.1\\r\\nHost: helixd\\r\\n\\r\\n")
else:
    host, port = target.split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(f"GET /ui/api/events HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
while chunk := s.recv(65536):
    total += len(chunk)
done()
"""


class Watchers:
    """The page's and ``helixctl top``'s streams, each read by a process of its own."""

    def __init__(self, listen: str, socket_path: str) -> None:
        self.targets = (("tcp", listen), ("unix", socket_path))
        self.procs: list[subprocess.Popen[str]] = []
        self.bytes = 0

    def __enter__(self) -> Watchers:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", WATCHER, kind, target], stdout=subprocess.PIPE, text=True
            )
            for kind, target in self.targets
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
            self.bytes += int(out.strip() or 0)


async def measure(
    url: str, listen: str, socket_path: str, daemon: psutil.Process, n: int, control: bool
) -> None:
    chat = url + "/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=0)
    watchers_bytes = 0
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        for _ in range(200):  # warm connections and code paths
            await one(session, chat, CHAT)
        lat: dict[str, list[float]] = {"alone": [], "watched": []}
        cpu = {"alone": 0.0, "watched": 0.0}
        rps: dict[str, list[float]] = {"alone": [], "watched": []}
        rounds = 10
        per_round = n // rounds
        for _ in range(rounds):
            for phase in ("alone", "watched"):
                watched = phase == "watched" and not control
                watchers = Watchers(listen, socket_path) if watched else None
                if watchers is not None:
                    watchers.__enter__()
                    await asyncio.sleep(0.5)  # let both streams connect and get a snapshot
                before = sum(daemon.cpu_times()[:2])
                for _ in range(per_round):
                    lat[phase].append(await one(session, chat, CHAT))
                cpu[phase] += sum(daemon.cpu_times()[:2]) - before
                rps[phase].append(await concurrent(session, chat, per_round, 32))
                if watchers is not None:
                    watchers.__exit__()
                    watchers_bytes += watchers.bytes
    counted = per_round * rounds
    print(f"{'':34} {'alone':>9} {'watched':>9} {'ratio':>6}")
    for name, pick in (
        ("latency p50, concurrency 1 (ms)", lambda p: pct(lat[p], 0.5)),
        ("latency p99, concurrency 1 (ms)", lambda p: pct(lat[p], 0.99)),
        ("throughput, concurrency 32 (req/s)", lambda p: sum(rps[p]) / len(rps[p])),
        ("helixd CPU per request (us)", lambda p: cpu[p] / counted * 1e6),
    ):
        a, w = pick("alone"), pick("watched")
        print(f"{name:34} {a:9.3f} {w:9.3f} {w / a:6.2f}")
    print(f"{counted} requests each way; the watchers read {watchers_bytes / 2**20:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--control",
        action="store_true",
        help="open no watchers in the 'watched' rounds: the ratios are then the noise",
    )
    args = parser.parse_args()
    with running_helixd(config) as (daemon, env):
        ctl(env, "load", "m")
        status = ctl(env, "status")
        listen = str(status["proxy"]["listen"])  # type: ignore[index]
        url = str(status["proxy"]["url"])  # type: ignore[index]
        asyncio.run(
            measure(
                url,
                listen,
                env["HELIXD_SOCKET"],
                psutil.Process(daemon.pid),
                args.requests,
                args.control,
            )
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
