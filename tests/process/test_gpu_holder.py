"""Fake GPU model servers (``tests/fakes/gpu_holder.py``) seen through ``ResourceMonitor``.

Each holder is a real process that registers an allocation with the fake NVML and then
serves the echo provider, the shape e2e tests give helixd as a GPU-hungry provider. The
monitor reads them with the real ``helixd.resources.gpu`` code over the fake ``pynvml``.
Waits poll the monitor's samples against deadlines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from helixd.resources.gpu import GpuReader
from helixd.resources.monitor import ResourceMonitor, ResourceSample
from tests.conftest import wait_for, wait_for_sync
from tests.process.fake_nvml import load_fake_nvml

REPO_ROOT = Path(__file__).resolve().parents[2]
HOLDER = REPO_ROOT / "tests" / "fakes" / "gpu_holder.py"
FAKE_NVML = REPO_ROOT / "tests" / "fakes" / "nvml" / "pynvml.py"
MIB = 1024 * 1024
GIB = 1024 * MIB
DEVICES = [
    {
        "name": "NVIDIA GeForce RTX 4090 (fake)",
        "uuid": f"GPU-{index}a0b1c2d-0000-4000-8000-00000000000{index}",
        "total_mib": 24576,
        "baseline_used_mib": 300,
    }
    for index in range(2)
]
EXIT_DEADLINE_S = 30.0
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Holder:
    """One gpu_holder process and its output files."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.err.read_text()


@dataclass
class Lab:
    """A fake NVML directory, a monitor reading it, and the holders started in it."""

    root: Path
    monitor: ResourceMonitor
    start: Callable[..., Holder]


@pytest.fixture
async def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Lab]:
    root = tmp_path / "nvml"
    (root / "procs").mkdir(parents=True)
    (root / "devices.json").write_text(json.dumps(DEVICES))
    monkeypatch.setenv("HELIXD_FAKE_NVML_DIR", str(root))
    nvml = load_fake_nvml("process")
    holders: list[Holder] = []

    def start(mib: float, *flags: str, visible: str | None = None) -> Holder:
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        index = len(holders)
        out, err = tmp_path / f"holder{index}.out", tmp_path / f"holder{index}.err"
        argv = [sys.executable, str(HOLDER), "--mib", str(mib), *flags, "--", "--port", "0"]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=stdout, stderr=stderr)
        holder = Holder(proc, out, err)
        holders.append(holder)
        return holder

    monitor = ResourceMonitor("auto", reader_factory=lambda s: GpuReader(s, nvml=nvml))
    await monitor.open()
    yield Lab(root, monitor, start)
    await monitor.close()
    for holder in holders:
        if holder.proc.poll() is None:
            holder.proc.kill()
        holder.proc.wait()


async def wait_sample(
    lab: Lab, predicate: Callable[[ResourceSample], bool], what: str
) -> ResourceSample:
    """Sample until ``predicate`` holds; the sample that satisfied it."""
    found: list[ResourceSample] = []

    async def check() -> bool:
        sample = await lab.monitor.sample()
        if predicate(sample):
            found.append(sample)
            return True
        return False

    await wait_for(check, timeout=EXIT_DEADLINE_S, what=what)
    return found[0]


def holds(pid: int, per_device: dict[int, int]) -> Callable[[ResourceSample], bool]:
    return lambda sample: sample.process_gpu_bytes.get(pid) == per_device


def exit_code(holder: Holder) -> int:
    return holder.proc.wait(timeout=EXIT_DEADLINE_S)


async def test_two_holders_show_with_their_bytes(lab: Lab) -> None:
    small, large = lab.start(4096), lab.start(6144)
    sample = await wait_sample(
        lab,
        # Memory info and the process list are two NVML calls, which a holder starting
        # or dying between them can make disagree (as with a real driver): wait for both.
        lambda s: (
            holds(small.pid, {0: 4 * GIB})(s)
            and holds(large.pid, {0: 6 * GIB})(s)
            and s.gpus[0].used_bytes == 300 * MIB + 10 * GIB
        ),
        "both holders' allocations on GPU 0",
    )
    gpu0, gpu1 = sample.gpus
    assert gpu0.used_bytes == 300 * MIB + 10 * GIB
    assert gpu0.free_bytes == 24576 * MIB - gpu0.used_bytes
    assert gpu1.used_bytes == 300 * MIB
    assert sample.tree_gpu_bytes([small.pid, large.pid]) == {0: 10 * GIB}

    large.proc.send_signal(signal.SIGKILL)
    sample = await wait_sample(
        lab,
        lambda s: (
            large.pid not in s.process_gpu_bytes and s.gpus[0].used_bytes == 300 * MIB + 4 * GIB
        ),
        "the killed holder's memory freed",
    )
    assert sample.process_gpu_bytes == {small.pid: {0: 4 * GIB}}


async def test_cuda_visible_devices_picks_the_device(lab: Lab) -> None:
    by_index = lab.start(1024, visible="1")
    by_uuid = lab.start(512, visible=f"{DEVICES[1]['uuid'][:12]},0")
    await wait_sample(lab, holds(by_index.pid, {1: GIB}), "the holder on GPU 1")
    sample = await wait_sample(
        lab,
        lambda s: (
            holds(by_uuid.pid, {1: 512 * MIB})(s)
            and s.gpus[1].used_bytes == 300 * MIB + GIB + 512 * MIB
        ),
        "the UUID holder",
    )
    assert sample.gpus[0].used_bytes == 300 * MIB


@pytest.mark.parametrize("visible", ["", "-1", "7", "GPU-nope"])
async def test_no_visible_device_exits_2(lab: Lab, visible: str) -> None:
    holder = lab.start(100, visible=visible)
    assert exit_code(holder) == 2
    assert "no CUDA-capable device is detected" in holder.stderr()


async def test_over_commit_fails_like_cuda(lab: Lab) -> None:
    first = lab.start(20 * 1024)
    await wait_sample(lab, holds(first.pid, {0: 20 * GIB}), "the first holder's 20 GiB")
    second = lab.start(8 * 1024)
    assert exit_code(second) == 1
    assert re.search(r"CUDA out of memory: tried to allocate 8192\.00 MiB", second.stderr())
    sample = await lab.monitor.sample()
    assert sample.process_gpu_bytes == {first.pid: {0: 20 * GIB}}
    # The same request on the other device fits.
    third = lab.start(8 * 1024, visible="1")
    await wait_sample(lab, holds(third.pid, {1: 8 * GIB}), "8 GiB on GPU 1")


async def test_memory_grows_during_the_load(lab: Lab) -> None:
    holder = lab.start(1000, "--load-seconds", "0.5")
    seen: list[int] = []

    def record(sample: ResourceSample) -> bool:
        held = sample.process_gpu_bytes.get(holder.pid, {}).get(0)
        if held is not None and (not seen or seen[-1] != held):
            seen.append(held)
        return held == 1000 * MIB

    await wait_sample(lab, record, "the holder to finish loading")
    print("observed", [v // MIB for v in seen])
    assert seen == sorted(seen) and seen[-1] == 1000 * MIB
    assert all(value % (100 * MIB) == 0 for value in seen)  # ten steps of 100 MiB


async def test_the_holder_serves_echo_from_the_same_pid(lab: Lab) -> None:
    holder = lab.start(256)
    wait_for_sync(
        lambda: "listening on" in holder.out.read_text() or holder.proc.poll() is not None,
        timeout=EXIT_DEADLINE_S,
        what="the echo provider in the holder to listen",
    )
    text = holder.out.read_text()
    assert f"gpu_holder: {holder.pid} holds 256 MiB on GPU 0" in text
    match = re.search(r"listening on (http://\S+)", text)
    assert match, text + holder.stderr()
    with OPENER.open(f"{match[1]}/health", timeout=5) as response:
        assert response.status == 200
    rss, gpu = await lab.monitor.tree_usage(holder.pid)
    assert gpu == {0: 256 * MIB} and rss > 0
    holder.proc.send_signal(signal.SIGTERM)
    assert exit_code(holder) == 0
    sample = await lab.monitor.sample()
    assert holder.pid not in sample.process_gpu_bytes


async def test_without_a_fake_driver_exits_2(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HELIXD_FAKE_NVML_DIR")
    holder = lab.start(100)
    assert exit_code(holder) == 2
    assert "HELIXD_FAKE_NVML_DIR is not set" in holder.stderr()
