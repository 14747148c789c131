"""Benchmark: what helixd's endpoint adds, against the same upstream called directly.

Starts a user-mode helixd whose model ``m`` is the echo server (process per model),
loads it, then measures in the same run, interleaved in rounds so both paths see the
same machine state:
  - latency at concurrency 1: direct to the model's server vs through helixd (p50, p99)
  - throughput at concurrency 32
  - streaming time to first chunk
  - helixd's own CPU time per proxied request (its process CPU over a counted run)
  - helixd's RSS before and after the whole run
and prints the ratios and differences. A third path, ``bare_relay.py`` (an aiohttp
server relaying through an aiohttp client and doing nothing else), measured the same way,
shows the floor of the stack helixd is built on, so its own share can be told apart; a
fourth, ``bare_httptools_relay.py`` (uvloop + httptools, nothing else), is the floor the
endpoint's rewrite on those aims at.
The issue's targets on a 2-core machine: added median latency <= 0.5 ms, <= 150 us of
helixd CPU per request, first-chunk overhead <= 1 ms, RSS flat.

Run: ``.venv/bin/python bench/proxy_overhead.py [--requests 2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
from common import BIN, running_helixd

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
STREAM = {**CHAT, "stream": True}


def config(root: Path) -> str:
    return f"""
[daemon]
socket = "{root}/helixd.sock"
state_dir = "{root}/state"
log_dir = "{root}/logs"
log_level = "warning"

[proxy]
listen = "127.0.0.1:0"

[providers.echo]
kind = "openai"
command = ["{{python}}", "-m", "helixd.providers.echo", "--host", "{{host}}", "--port",
           "{{port}}", "--model", "{{model}}"]
health = {{ path = "/health" }}

[models.m]
provider = "echo"
max_concurrency = 64
keep_alive = "forever"
"""


def ctl(env: dict[str, str], *args: str) -> dict[str, object]:
    out = subprocess.run(
        [str(BIN / "helixctl"), "--json", *args], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"helixctl {' '.join(args)} failed: {out.stderr}")
    document: dict[str, object] = json.loads(out.stdout)
    return document


async def one(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> float:
    started = time.perf_counter()
    async with session.post(url, json=body) as response:
        await response.read()
        if response.status != 200:
            raise SystemExit(f"{url}: HTTP {response.status}")
    return time.perf_counter() - started


async def first_chunk(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.post(url, json=STREAM) as response:
        await response.content.readany()
        elapsed = time.perf_counter() - started
        await response.read()
    return elapsed


async def concurrent(session: aiohttp.ClientSession, url: str, total: int, width: int) -> float:
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            await one(session, url, CHAT)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    return total / (time.perf_counter() - started)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


PATHS = ("direct", "bare", "floor", "helixd")


async def measure(urls: dict[str, str], relays: dict[str, psutil.Process], n: int) -> None:
    """Interleave the paths in rounds; count the relays' CPU over their own rounds."""
    connector = aiohttp.TCPConnector(limit=0)
    chat = {k: url + "/v1/chat/completions" for k, url in urls.items()}
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        for url in chat.values():  # warm connections and code paths
            for _ in range(200):
                await one(session, url, CHAT)
        rss_before = relays["helixd"].memory_info().rss
        lat: dict[str, list[float]] = {k: [] for k in PATHS}
        ttft: dict[str, list[float]] = {k: [] for k in PATHS}
        cpu_s = dict.fromkeys(relays, 0.0)
        rounds = 20
        per_round = n // rounds
        for _ in range(rounds):
            for path in PATHS:
                process = relays.get(path)
                before = sum(process.cpu_times()[:2]) if process else 0.0
                for _ in range(per_round):
                    lat[path].append(await one(session, chat[path], CHAT))
                if process:
                    cpu_s[path] += sum(process.cpu_times()[:2]) - before
            for _ in range(5):
                for path in PATHS:
                    ttft[path].append(await first_chunk(session, chat[path]))
        throughput = {k: await concurrent(session, chat[k], n, 32) for k in PATHS}
        rss_after = relays["helixd"].memory_info().rss
    counted = per_round * rounds
    rows = [
        ("latency p50, concurrency 1 (ms)", {k: pct(v, 0.5) for k, v in lat.items()}),
        ("latency p99, concurrency 1 (ms)", {k: pct(v, 0.99) for k, v in lat.items()}),
        ("first chunk, streaming (ms)", {k: statistics.median(v) * 1000 for k, v in ttft.items()}),
    ]
    print(
        f"{'':34} {'direct':>8} {'bare':>8} {'floor':>8} {'helixd':>8} {'added':>7} "
        f"{'ratio':>6} {'vs bare':>8} {'vs floor':>8}"
    )
    for name, v in rows:
        print(
            f"{name:34} {v['direct']:8.3f} {v['bare']:8.3f} {v['floor']:8.3f} "
            f"{v['helixd']:8.3f} {v['helixd'] - v['direct']:7.3f} "
            f"{v['helixd'] / v['direct']:6.2f} {v['helixd'] / v['bare']:8.2f} "
            f"{v['helixd'] / v['floor']:8.2f}"
        )
    t = throughput
    print(
        f"{'throughput, concurrency 32 (req/s)':34} {t['direct']:8.0f} {t['bare']:8.0f} "
        f"{t['floor']:8.0f} {t['helixd']:8.0f} {'':7} {t['helixd'] / t['direct']:6.2f} "
        f"{t['helixd'] / t['bare']:8.2f} {t['helixd'] / t['floor']:8.2f}"
    )
    cpu = {k: v / counted * 1e6 for k, v in cpu_s.items()}
    print(
        f"CPU per proxied request: helixd {cpu['helixd']:.0f} us, bare aiohttp relay "
        f"{cpu['bare']:.0f} us (ratio {cpu['helixd'] / cpu['bare']:.2f}), uvloop + httptools "
        f"floor {cpu['floor']:.0f} us (ratio {cpu['helixd'] / cpu['floor']:.2f}); "
        f"{counted} requests each"
    )
    print(
        f"helixd RSS: {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB after "
        f"{n * 2 + 200 + rounds * 5} proxied requests"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with running_helixd(config) as (daemon, env):
        model = ctl(env, "load", "m")["model"]
        status = ctl(env, "status")
        direct = str(model["upstream"])  # type: ignore[index]
        relays_started = {
            name: subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name(script)), direct],
                stdout=subprocess.PIPE,
                text=True,
            )
            for name, script in (("bare", "bare_relay.py"), ("floor", "bare_httptools_relay.py"))
        }
        try:
            urls = {"direct": direct, "helixd": str(status["proxy"]["url"])}  # type: ignore[index]
            for name, process in relays_started.items():
                assert process.stdout is not None
                urls[name] = process.stdout.readline().strip()
            relays = {name: psutil.Process(p.pid) for name, p in relays_started.items()}
            relays["helixd"] = psutil.Process(daemon.pid)
            asyncio.run(measure(urls, relays, args.requests))
        finally:
            for process in relays_started.values():
                process.terminate()
                process.wait(30)


if __name__ == "__main__":
    main()
