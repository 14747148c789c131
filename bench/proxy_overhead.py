"""Benchmark: what helixd's endpoint adds, against the same upstream called directly.

Starts a user-mode helixd whose model ``m`` is the echo server (process per model),
loads it, then measures in the same run, interleaved in rounds so both paths see the
same machine state:
  - latency at concurrency 1: direct to the model's server vs through helixd (p50, p99)
  - throughput at concurrency 32
  - streaming time to first chunk
  - helixd's own CPU time per proxied request (its process CPU over a counted run)
  - helixd's RSS before and after the whole run
and prints the ratios and differences. The issue's targets on a 2-core machine: added
median latency <= 0.5 ms, <= 150 us of helixd CPU per request, first-chunk overhead
<= 1 ms, RSS flat.

Run: ``.venv/bin/python bench/proxy_overhead.py [--requests 2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

BIN = Path(sys.executable).parent
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


async def measure(direct: str, proxied: str, helixd: psutil.Process, n: int) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        for url in (direct, proxied):  # warm connections and code paths
            for _ in range(200):
                await one(session, url + "/v1/chat/completions", CHAT)
        rss_before = helixd.memory_info().rss
        lat: dict[str, list[float]] = {"direct": [], "helixd": []}
        ttft: dict[str, list[float]] = {"direct": [], "helixd": []}
        rounds = 20
        cpu_s = 0.0
        counted = 0
        for _ in range(rounds):
            for _ in range(n // rounds):
                lat["direct"].append(await one(session, direct + "/v1/chat/completions", CHAT))
            before = sum(helixd.cpu_times()[:2])
            for _ in range(n // rounds):
                lat["helixd"].append(await one(session, proxied + "/v1/chat/completions", CHAT))
            cpu_s += sum(helixd.cpu_times()[:2]) - before
            counted += n // rounds
            for _ in range(5):
                ttft["direct"].append(await first_chunk(session, direct + "/v1/chat/completions"))
                ttft["helixd"].append(await first_chunk(session, proxied + "/v1/chat/completions"))
        throughput = {
            "direct": await concurrent(session, direct + "/v1/chat/completions", n, 32),
            "helixd": await concurrent(session, proxied + "/v1/chat/completions", n, 32),
        }
        rss_after = helixd.memory_info().rss
    p50 = {k: pct(v, 0.5) for k, v in lat.items()}
    p99 = {k: pct(v, 0.99) for k, v in lat.items()}
    first = {k: statistics.median(v) * 1000 for k, v in ttft.items()}
    print(f"{'':34} {'direct':>10} {'helixd':>10} {'added':>9} {'ratio':>7}")
    rows = [
        ("latency p50, concurrency 1 (ms)", p50),
        ("latency p99, concurrency 1 (ms)", p99),
        ("first chunk, streaming (ms)", first),
    ]
    for name, values in rows:
        added = values["helixd"] - values["direct"]
        ratio = values["helixd"] / values["direct"]
        print(
            f"{name:34} {values['direct']:10.3f} {values['helixd']:10.3f} {added:9.3f} {ratio:7.2f}"
        )
    t = throughput
    print(
        f"{'throughput, concurrency 32 (req/s)':34} {t['direct']:10.0f} {t['helixd']:10.0f} "
        f"{'':9} {t['helixd'] / t['direct']:7.2f}"
    )
    print(f"helixd CPU per proxied request: {cpu_s / counted * 1e6:.0f} us ({counted} requests)")
    print(
        f"helixd RSS: {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB after "
        f"{n * 2 + 200 + rounds * 5} proxied requests"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "helixd.toml").write_text(config(root))
        env = dict(os.environ, HELIXD_SOCKET=str(root / "helixd.sock"))
        daemon = subprocess.Popen(
            [str(BIN / "helixd"), "--user", "--config", str(root / "helixd.toml")], env=env
        )
        try:
            deadline = time.monotonic() + 30
            while (
                subprocess.run(
                    [str(BIN / "helixctl"), "status"], env=env, capture_output=True
                ).returncode
                != 0
            ):
                if time.monotonic() > deadline:
                    sys.exit("helixd did not come up")
                time.sleep(0.1)
            model = ctl(env, "load", "m")["model"]
            status = ctl(env, "status")
            direct = str(model["upstream"])  # type: ignore[index]
            proxied = str(status["proxy"]["url"])  # type: ignore[index]
            asyncio.run(measure(direct, proxied, psutil.Process(daemon.pid), args.requests))
        finally:
            daemon.terminate()
            daemon.wait(30)


if __name__ == "__main__":
    main()
