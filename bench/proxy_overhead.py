"""Benchmark: what helixd's endpoint adds, against the same upstream called directly.

Starts a user-mode helixd whose model ``m`` is ``fast_upstream.py`` (canned answers on
uvloop + httptools, so the upstream costs next to nothing), loads it, and measures in
one run, the paths interleaved in rounds so each sees the same machine state:

- ``direct``: the model's server itself;
- ``aiohttp``: ``bare_relay.py``, an aiohttp server relaying through an aiohttp client and
  nothing else (what the endpoint was built on before);
- ``floor``: ``bare_httptools_relay.py``, a relay of about a hundred lines on uvloop +
  httptools with no routing, logging or metrics: the floor the endpoint aims at;
- ``helixd``: the endpoint, with its access log and metrics on.

Figures: latency p50 and p99 at concurrency 1 (a raw-socket client on one keep-alive
connection, so the client costs little), time to the first chunk of a stream, each
relay's own CPU time per request (non-streaming, streaming; helixd's Ollama dialect
too), throughput at 32 connections under ``wrk`` (Debian's ``wrk``; skipped with a note
when it is not installed), and helixd's RSS before and after ``--rss-requests`` requests.

Targets (issue 14, a 2-core machine): <= 50 us of helixd CPU per request (<= 2.5x the
floor), <= 0.1 ms added p50, <= 0.25 ms added first chunk, >= 0.2x direct throughput,
RSS <= 60 MB and flat.

Run: ``.venv/bin/python bench/proxy_overhead.py [--requests 2000] [--wrk-seconds 5]``
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from common import BIN, running_helixd

HERE = Path(__file__).resolve().parent
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
STREAM = {**CHAT, "stream": True}
OLLAMA = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": False}
OLLAMA_STREAM = {**OLLAMA, "stream": True}
PATHS = ("direct", "aiohttp", "floor", "helixd")


def config(root: Path) -> str:
    return f"""
[daemon]
socket = "{root}/helixd.sock"
state_dir = "{root}/state"
log_dir = "{root}/logs"
log_level = "info"

[proxy]
listen = "127.0.0.1:0"

[providers.fast]
kind = "openai"
command = ["{{python}}", "{HERE / "fast_upstream.py"}", "--host", "{{host}}", "--port",
           "{{port}}", "--model", "{{model}}"]
health = {{ path = "/health" }}

[models.m]
provider = "fast"
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


class Client:
    """One keep-alive connection, requests sent whole, answers read by their framing."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = f"{parts.hostname}:{parts.port}"
        self.sock = socket.create_connection((parts.hostname, parts.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def request(self, path: str, body: dict[str, object]) -> tuple[float, float]:
        """(seconds to the whole answer, seconds to the first byte of its body)."""
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        started = time.perf_counter()
        self.sock.sendall(head + data)
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        top, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        if not top.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"{path}: {top.splitlines()[0].decode()}")
        while not self.buffer:
            self._more()
        first = time.perf_counter() - started
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", top)
        if length is not None:
            size = int(length.group(1))
            while len(self.buffer) < size:
                self._more()
            self.buffer = self.buffer[size:]
        else:  # chunked
            while True:
                while b"\r\n" not in self.buffer:
                    self._more()
                line, _, rest = self.buffer.partition(b"\r\n")
                size = int(line, 16)
                while len(rest) < size + 2:
                    self._more()
                    line, _, rest = self.buffer.partition(b"\r\n")
                self.buffer = rest[size + 2 :]
                if size == 0:
                    break
        return time.perf_counter() - started, first

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise SystemExit("the server closed the connection")
        self.buffer += chunk


def cpu_of(process: psutil.Process | None) -> float:
    return sum(process.cpu_times()[:2]) if process is not None else 0.0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def wrk(url: str, seconds: int, connections: int = 32) -> tuple[float, int]:
    """(requests per second, requests made) of ``wrk`` POSTing CHAT to ``url``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        body = json.dumps(json.dumps(CHAT))
        script.write(
            f'wrk.method = "POST"\nwrk.body = {body}\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url],
        capture_output=True,
        text=True,
    ).stdout
    Path(script.name).unlink()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    made = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rate is None or made is None or errors is not None:
        raise SystemExit(f"wrk on {url} failed:\n{out}")
    return float(rate.group(1)), int(made.group(1))


def measure(
    urls: dict[str, str], relays: dict[str, psutil.Process], args: argparse.Namespace
) -> None:
    clients = {k: Client(url) for k, url in urls.items()}
    chat = "/v1/chat/completions"
    for client in clients.values():  # warm connections and code paths
        for _ in range(300):
            client.request(chat, CHAT)
            client.request(chat, STREAM)
    helixd = relays["helixd"]
    rss_before = helixd.memory_info().rss
    lat: dict[str, list[float]] = {k: [] for k in PATHS}
    ttft: dict[str, list[float]] = {k: [] for k in PATHS}
    cpu_s = dict.fromkeys(PATHS, 0.0)
    cpu_stream = dict.fromkeys(PATHS, 0.0)
    cpu_ollama = {"chat": 0.0, "stream": 0.0}
    rounds = 20
    per_round = max(1, args.requests // rounds)
    for _ in range(rounds):
        for path in PATHS:
            client, process = clients[path], relays.get(path)
            before = cpu_of(process)
            for _ in range(per_round):
                lat[path].append(client.request(chat, CHAT)[0])
            middle = cpu_of(process)
            for _ in range(per_round):
                ttft[path].append(client.request(chat, STREAM)[1])
            cpu_s[path] += middle - before
            cpu_stream[path] += cpu_of(process) - middle
        client = clients["helixd"]
        before = cpu_of(helixd)
        for _ in range(per_round):
            client.request("/api/chat", OLLAMA)
        middle = cpu_of(helixd)
        for _ in range(per_round):
            client.request("/api/chat", OLLAMA_STREAM)
        cpu_ollama["chat"] += middle - before
        cpu_ollama["stream"] += cpu_of(helixd) - middle
    counted = per_round * rounds
    throughput: dict[str, float] = {}
    made = 0
    if shutil.which("wrk"):
        for path in PATHS:
            throughput[path], n = wrk(urls[path] + chat, args.wrk_seconds)
            made += n if path == "helixd" else 0
    while shutil.which("wrk") and made < args.rss_requests:
        made += wrk(urls["helixd"] + chat, args.wrk_seconds)[1]
    rss_after = helixd.memory_info().rss

    header = f"{'':36} {'direct':>8} {'aiohttp':>8} {'floor':>8} {'helixd':>8} {'added':>7}"
    print(header + f" {'vs aiohttp':>10} {'vs floor':>8}")
    rows = [
        ("latency p50, concurrency 1 (ms)", {k: pct(v, 0.5) for k, v in lat.items()}),
        ("latency p99, concurrency 1 (ms)", {k: pct(v, 0.99) for k, v in lat.items()}),
        ("first chunk of a stream, p50 (ms)", {k: pct(v, 0.5) for k, v in ttft.items()}),
    ]
    for name, v in rows:
        print(
            f"{name:36} {v['direct']:8.3f} {v['aiohttp']:8.3f} {v['floor']:8.3f} "
            f"{v['helixd']:8.3f} {v['helixd'] - v['direct']:+7.3f} "
            f"{v['helixd'] / v['aiohttp']:10.2f} {v['helixd'] / v['floor']:8.2f}"
        )
    cpu = {k: v / counted * 1e6 for k, v in cpu_s.items()}
    streamed = {k: v / counted * 1e6 for k, v in cpu_stream.items()}
    for name, v in (("CPU per request (us)", cpu), ("CPU per streamed request (us)", streamed)):
        print(
            f"{name:36} {'':>8} {v['aiohttp']:8.0f} {v['floor']:8.0f} {v['helixd']:8.0f} "
            f"{'':7} {v['helixd'] / v['aiohttp']:10.2f} {v['helixd'] / v['floor']:8.2f}"
        )
    if throughput:
        t = throughput
        print(
            f"{'throughput, 32 connections (req/s)':36} {t['direct']:8.0f} {t['aiohttp']:8.0f} "
            f"{t['floor']:8.0f} {t['helixd']:8.0f} {'':7} {t['helixd'] / t['aiohttp']:10.2f} "
            f"{t['helixd'] / t['floor']:8.2f}"
        )
        print(
            f"throughput vs direct: helixd {t['helixd'] / t['direct']:.2f}x, floor "
            f"{t['floor'] / t['direct']:.2f}x, aiohttp {t['aiohttp'] / t['direct']:.2f}x"
        )
    else:
        print("throughput: skipped (install wrk: apt-get install wrk)")
    print(
        f"helixd, Ollama dialect (translated): {cpu_ollama['chat'] / counted * 1e6:.0f} us CPU "
        f"per request, {cpu_ollama['stream'] / counted * 1e6:.0f} us per streamed request"
    )
    print(
        f"helixd RSS: {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB after "
        f"{made + counted * 4 + 600} more requests; {counted} requests per figure at "
        f"concurrency 1"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per path and kind")
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--rss-requests", type=int, default=100_000)
    args = parser.parse_args()
    with running_helixd(config) as (daemon, env):
        model = ctl(env, "load", "m")["model"]
        status = ctl(env, "status")
        direct = str(model["upstream"])  # type: ignore[index]
        relays_started = {
            name: subprocess.Popen(
                [sys.executable, str(HERE / script), direct],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # aiohttp's noise when wrk drops its connections
                text=True,
            )
            for name, script in (("aiohttp", "bare_relay.py"), ("floor", "bare_httptools_relay.py"))
        }
        try:
            urls = {"direct": direct, "helixd": str(status["proxy"]["url"])}  # type: ignore[index]
            for name, process in relays_started.items():
                assert process.stdout is not None
                urls[name] = process.stdout.readline().strip()
            relays = {name: psutil.Process(p.pid) for name, p in relays_started.items()}
            relays["helixd"] = psutil.Process(daemon.pid)
            measure(urls, relays, args)
        finally:
            for process in relays_started.values():
                process.terminate()
                process.wait(30)


if __name__ == "__main__":
    main()
