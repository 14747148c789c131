"""Benchmark: helixd against llama-server's own router mode, the same workload, one run.

Both systems serve the same three tiny models with the same real ``llama-server`` (built
by ``make llama-server``), at most two resident at once, each model server on one thread:

  (a) router: ``llama-server --models-preset FILE --models-max 2`` — llama.cpp's own
      router, loading on demand (autoload) and evicting its least recently used child;
  (b) helixd: kind ``llamacpp``, a ``llama-server`` process per model, ``max_loaded_models
      = 2``, loaded on demand by helixd's endpoint.

Workload: clients that stream chat completions (``max_tokens`` tokens, ``ignore_eos``) and
alternate models — each client asks for a model twice, then moves on to the next of the
three (so at concurrency 1 every other request needs a swap) — at concurrency 1 and 8,
each for ``--seconds``. Per system and concurrency it reports: requests, failed requests
(no answer, or an error before the first byte), requests cut mid-stream (a first byte but
no ``[DONE]``, or an error event), swaps (loads the system itself counted), time from
request to first byte for requests whose model was not resident when they were sent (the
system's own listing, asked just before), and peak RSS of the whole process tree. Then,
with one model warm, what each adds to a request against calling that model's
``llama-server`` directly (median latency and median time to first byte, interleaved).

Run: ``make llama-server && .venv/bin/python bench/vs_llamacpp_router.py [--seconds 20]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from common import running_helixd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from helixd.supervisor.spec import free_port  # noqa: E402
from tests.fakes.tiny_gguf import write_tiny_llama  # noqa: E402

MODELS = ("x", "y", "z")
CTX = 512


@dataclass
class Phase:
    """What one system did at one concurrency."""

    requests: int = 0
    failed: int = 0
    cut: int = 0
    swaps: int = 0
    swap_ttfb: list[float] = field(default_factory=list)
    warm_ttfb: list[float] = field(default_factory=list)
    peak_rss: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class System:
    """One system under test: where to send requests and how to read its residency."""

    name: str
    url: str
    root_pid: int

    async def resident(self, session: aiohttp.ClientSession) -> set[str]:
        raise NotImplementedError

    async def loads(self) -> int:
        raise NotImplementedError

    async def direct_url(self, session: aiohttp.ClientSession, model: str) -> str:
        raise NotImplementedError


class Router(System):
    name = "llama-server router"

    def __init__(self, url: str, pid: int, log: Path) -> None:
        self.url, self.root_pid, self.log = url, pid, log

    async def resident(self, session: aiohttp.ClientSession) -> set[str]:
        async with session.get(self.url + "/models") as response:
            data = await response.json()
        return {m["id"] for m in data["data"] if m["status"]["value"] == "loaded"}

    async def loads(self) -> int:
        return self.log.read_text(errors="replace").count("spawning server instance with name=")

    async def direct_url(self, session: aiohttp.ClientSession, model: str) -> str:
        async with session.get(self.url + "/models") as response:
            data = await response.json()
        (card,) = [m for m in data["data"] if m["id"] == model]
        args = card["status"]["args"]
        return f"http://127.0.0.1:{args[args.index('--port') + 1]}"


class Helixd(System):
    name = "helixd"

    def __init__(self, url: str, pid: int, env: dict[str, str]) -> None:
        self.url, self.root_pid, self.env = url, pid, env

    async def resident(self, session: aiohttp.ClientSession) -> set[str]:
        async with session.get(self.url + "/v1/models") as response:
            data = await response.json()
        return {m["id"] for m in data["data"] if m.get("helix", {}).get("state") == "loaded"}

    async def loads(self) -> int:
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.get(self.url + "/metrics") as response,
        ):
            text = await response.text()
        return int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("helix_model_loads_total{")
            )
        )

    async def direct_url(self, session: aiohttp.ClientSession, model: str) -> str:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "helixctl"), "--json", "models"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (card,) = [m for m in json.loads(out)["models"] if m["name"] == model]
        return str(card["upstream"])


def body(model: str, tokens: int, stream: bool = True) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": stream,
    }


async def one_stream(
    session: aiohttp.ClientSession, url: str, model: str, tokens: int
) -> tuple[str, float | None]:
    """``(outcome, seconds to first data line)``; outcome ok, failed:WHY or cut:WHY."""
    began = time.monotonic()
    first: float | None = None
    try:
        async with session.post(url + "/v1/chat/completions", json=body(model, tokens)) as r:
            if r.status != 200:
                return f"failed:HTTP {r.status} {(await r.text())[:80]}", None
            done = False
            async for raw in r.content:
                line = raw.decode(errors="replace").strip()
                if not line.startswith("data:"):
                    continue  # SSE comments (keep-alives) are not the answer
                if first is None:
                    first = time.monotonic() - began
                if line == "data: [DONE]":
                    done = True
                elif '"error"' in line:
                    return "cut:error event", first
            if not done:
                return "cut:no [DONE]", first
            return "ok", first
    except (aiohttp.ClientError, TimeoutError) as exc:
        kind = "cut" if first is not None else "failed"
        return f"{kind}:{type(exc).__name__}", first


async def run_phase(system: System, clients: int, seconds: float, tokens: int) -> Phase:
    phase = Phase()
    loads_before = await system.loads()
    stop_at = time.monotonic() + seconds
    async with aiohttp.ClientSession(
        trust_env=False, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def client(index: int) -> None:
            step = index  # clients start apart in the pattern x x y y z z …
            while time.monotonic() < stop_at:
                model = MODELS[(step // 2) % len(MODELS)]
                step += 1
                resident = await system.resident(session)
                outcome, ttfb = await one_stream(session, system.url, model, tokens)
                phase.requests += 1
                if outcome != "ok":
                    phase.errors[outcome] = phase.errors.get(outcome, 0) + 1
                    if outcome.startswith("failed"):
                        phase.failed += 1
                        continue
                    phase.cut += 1
                if ttfb is not None:
                    (phase.warm_ttfb if model in resident else phase.swap_ttfb).append(ttfb)

        with peak_rss(system.root_pid) as peak:
            await asyncio.gather(*(client(i) for i in range(clients)))
    phase.swaps = await system.loads() - loads_before
    phase.peak_rss = peak[0]
    return phase


@contextlib.contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    """The largest RSS of ``pid``'s whole tree, sampled every 50 ms while inside."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                total = 0
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                peak[0] = max(peak[0], total)
            stop.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


async def warm_overhead(system: System, rounds: int) -> dict[str, float]:
    """Median latency and first byte, with one model warm: through the system vs direct."""
    async with aiohttp.ClientSession(trust_env=False) as session:
        outcome, _ = await one_stream(session, system.url, "x", 2)  # load it
        assert outcome == "ok", outcome
        direct = await system.direct_url(session, "x")
        timings: dict[str, list[float]] = {k: [] for k in ("sys", "direct", "sys1", "direct1")}
        for _ in range(rounds):
            for key, url in (("sys", system.url), ("direct", direct)):
                began = time.monotonic()
                async with session.post(
                    url + "/v1/chat/completions", json=body("x", 2, stream=False)
                ) as r:
                    await r.read()
                    assert r.status == 200, r.status
                timings[key].append(time.monotonic() - began)
                _, first = await one_stream(session, url, "x", 2)
                assert first is not None
                timings[key + "1"].append(first)
    med = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    return {
        "latency_direct": med["direct"],
        "latency_added": med["sys"] - med["direct"],
        "ttfb_direct": med["direct1"],
        "ttfb_added": med["sys1"] - med["direct1"],
    }


@contextlib.contextmanager
def running_router(binary: Path, root: Path, paths: dict[str, Path]) -> Iterator[Router]:
    preset = root / "router.ini"
    sections = [
        f"[{name}]\nmodel = {path}\nctx-size = {CTX}\nload-on-startup = false\n"
        for name, path in paths.items()
    ]
    preset.write_text("version = 1\n\n" + "\n".join(sections))
    port = free_port()
    log = root / "router.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *(str(binary), "--host", "127.0.0.1", "--port", str(port), "-t", "1"),
                *("--models-preset", str(preset), "--models-max", "2"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc)
        yield Router(url, proc.pid, log)
    finally:
        proc.terminate()
        proc.wait(30)


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        if proc is not None and proc.poll() is not None:
            sys.exit(f"{url}: the server exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            sys.exit(f"{url} did not answer within 60 s")
        time.sleep(0.05)  # a poll interval; the deadline bounds it


def helixd_config(binary: Path, paths: dict[str, Path], port: int) -> Callable[[Path], str]:
    def config(root: Path) -> str:
        text = f"""
[daemon]
socket = "{root}/helixd.sock"
state_dir = "{root}/state"
log_dir = "{root}/logs"
log_level = "warning"

[proxy]
listen = "127.0.0.1:{port}"

[resources]
gpus = "none"
max_loaded_models = 2

[providers.llama]
kind = "llamacpp"
command = ["{binary}", "-m", "{{model_path}}", "--host", "{{host}}", "--port", "{{port}}",
           "-c", "{{ctx}}", "-t", "1"]
"""
        for name, path in paths.items():
            text += f'\n[models.{name}]\nprovider = "llama"\npath = "{path}"\nctx = {CTX}\n'
            text += "max_concurrency = 8\n"
        return text

    return config


def llama_server_binary() -> Path:
    given = os.environ.get("HELIXD_TEST_LLAMA_SERVER")
    if given:
        return Path(given)
    script = ROOT / "tests" / "tools" / "build_llama_server.sh"
    found = subprocess.run([str(script), "--path"], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        sys.exit("llama-server is not built: run make llama-server first")
    return Path(found.stdout.strip())


def pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f} ms"


def ratio(baseline: str, other: str) -> str:
    """``other / baseline`` of two cells such as ``87 ms`` or ``371``; ``-`` when undefined."""
    try:
        a, b = float(baseline.split()[0]), float(other.split()[0])
    except (ValueError, IndexError):
        return "-"
    return f"{b / a:.2f}x" if a else "-"


def report(results: dict[str, dict[int, Phase]], warm: dict[str, dict[str, float]]) -> None:
    systems = list(results)
    rows: list[tuple[str, ...]] = []
    for c in sorted(next(iter(results.values()))):
        for label, get in (
            ("requests", lambda p: str(p.requests)),
            ("failed requests", lambda p: str(p.failed)),
            ("cut mid-stream", lambda p: str(p.cut)),
            ("swaps (loads)", lambda p: str(p.swaps)),
            ("first byte on a swap, p50", lambda p: pct(p.swap_ttfb, 0.5)),
            ("first byte on a swap, p99", lambda p: pct(p.swap_ttfb, 0.99)),
            ("first byte when resident, p50", lambda p: pct(p.warm_ttfb, 0.5)),
            ("peak RSS of the tree", lambda p: f"{p.peak_rss / 2**20:.0f} MiB"),
        ):
            rows.append((f"concurrency {c}: {label}", *(get(results[s][c]) for s in systems)))
    for label, key in (
        ("warm: latency, direct to the model's server", "latency_direct"),
        ("warm: latency added", "latency_added"),
        ("warm: first byte, direct", "ttfb_direct"),
        ("warm: first byte added", "ttfb_added"),
    ):
        rows.append((label, *(f"{warm[s][key]:.2f} ms" for s in systems)))
    print()
    ratio_head = f" {systems[-1]} / {systems[0]} |" if len(systems) == 2 else ""
    print("| | " + " | ".join(systems) + " |" + ratio_head)
    print("|---|" + "---|" * (len(systems) + bool(ratio_head)))
    for row in rows:
        extra = f" {ratio(row[1], row[2])} |" if ratio_head else ""
        print("| " + " | ".join(row) + " |" + extra)
    for system, phases in results.items():
        for c, phase in phases.items():
            if phase.errors:
                print(f"{system}, concurrency {c}: {phase.errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per system and concurrency")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per streamed answer")
    parser.add_argument("--rounds", type=int, default=100, help="warm-overhead rounds")
    args = parser.parse_args()
    binary = llama_server_binary()
    results: dict[str, dict[int, Phase]] = {}
    warm: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = {m: write_tiny_llama(root / f"{m}.gguf", seed=i) for i, m in enumerate(MODELS)}
        print(f"llama-server {binary}; {args.seconds:g} s per phase", flush=True)

        def run_all(system: System) -> None:
            results[system.name] = {}
            for clients in (1, 8):
                print(f"{system.name}: concurrency {clients}", flush=True)
                results[system.name][clients] = asyncio.run(
                    run_phase(system, clients, args.seconds, args.tokens)
                )
            print(f"{system.name}: warm overhead", flush=True)
            warm[system.name] = asyncio.run(warm_overhead(system, args.rounds))

        with running_router(binary, root, paths) as router:
            run_all(router)
        port = free_port()
        with running_helixd(helixd_config(binary, paths, port)) as (daemon, env):
            run_all(Helixd(f"http://127.0.0.1:{port}", daemon.pid, env))
    report(results, warm)


if __name__ == "__main__":
    main()
