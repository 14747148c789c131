"""The real NVML on a real GPU: a child allocates GPU memory, ``GpuReader`` must see it.

The child uses the CUDA driver API through ctypes alone (``libcuda.so.1``: ``cuInit``,
``cuDeviceGet``, ``cuCtxCreate_v2``, ``cuMemAlloc_v2``), so no framework is needed. What
NVML reports for it is the allocation plus the CUDA context (a few hundred MiB, by GPU
and driver); the tests print the measured overhead.

Skipped, with the reason, where NVML cannot start (no driver) or ``libcuda`` is missing.

PID namespaces: NVML reports the pids the driver sees, the host's. Inside a container
with its own PID namespace those are not the pids we know, and per-pid attribution
cannot work. The tests detect that (a new NVML pid that is none of ours, holding what our
child allocated), check the figure anyway, and skip the attribution with the reason.
"""

from __future__ import annotations

import ctypes
import os
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from helixd.resources.gpu import GpuReader, GpuReading
from helixd.resources.monitor import ResourceMonitor
from tests.conftest import wait_for_sync

pytestmark = pytest.mark.gpu

MIB = 1024 * 1024
ALLOC = 1024 * MIB
MAX_CONTEXT = 600 * MIB  # CUDA context overhead allowed on top of the allocation
DEADLINE_S = 60.0

CHILD = textwrap.dedent(
    """
    import ctypes, sys

    size = int(sys.argv[1])
    cuda = ctypes.CDLL("libcuda.so.1")

    def check(result, call):
        if result != 0:
            name = ctypes.c_char_p()
            cuda.cuGetErrorName(result, ctypes.byref(name))
            print(f"{call} failed: {result} {name.value}", flush=True)
            sys.exit(3)

    cuda.cuCtxCreate_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    cuda.cuMemAlloc_v2.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    check(cuda.cuInit(0), "cuInit")
    device = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    context = ctypes.c_void_p()
    check(cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device.value), "cuCtxCreate_v2")
    pointer = ctypes.c_uint64()
    check(cuda.cuMemAlloc_v2(ctypes.byref(pointer), size), "cuMemAlloc_v2")
    print("ready", flush=True)
    sys.stdin.read()  # hold the memory until the test closes our stdin
    """
)


@pytest.fixture(scope="module", autouse=True)
def real_gpu() -> None:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no usable NVIDIA driver: nvmlInit failed ({exc})")
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    if count == 0:
        pytest.skip("NVML sees no GPU")
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        pytest.skip(f"libcuda.so.1 cannot be loaded: {exc}")


@dataclass
class Held:
    """A child holding ALLOC bytes, and where NVML shows it."""

    child: subprocess.Popen[str]
    nvml_pid: int  # the child's pid as NVML reports it (the host's, in a PID namespace)
    before: GpuReading
    during: GpuReading

    @property
    def measured(self) -> int:
        return sum(self.during.process_bytes[self.nvml_pid].values())

    @property
    def same_namespace(self) -> bool:
        return self.nvml_pid == self.child.pid


def wait_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], deadline - time.monotonic())
        if ready:
            line = child.stdout.readline()
            if line.strip() == "ready":
                return
            rest = child.stdout.read() if child.poll() is not None else ""
            pytest.fail(f"CUDA child said {line!r}{rest}, exit {child.poll()}")
    pytest.fail(f"CUDA child not ready within {DEADLINE_S} s")


def find_child(reader: GpuReader, child: subprocess.Popen[str], before: GpuReading) -> int:
    """The pid under which NVML lists ``child``: its own, or a new one of another namespace."""
    found: list[int] = []

    def listed() -> bool:
        reading = reader.read()
        if child.pid in reading.process_bytes:
            found.append(child.pid)
            return True
        ours = set(psutil.pids())
        foreign = [
            pid
            for pid, per_device in reading.process_bytes.items()
            if pid not in before.process_bytes
            and pid not in ours
            and sum(per_device.values()) >= ALLOC
        ]
        if len(foreign) == 1:
            found.append(foreign[0])
            return True
        return False

    wait_for_sync(listed, timeout=DEADLINE_S, what=f"NVML to list the CUDA child {child.pid}")
    return found[0]


@pytest.fixture
def held() -> Iterator[Held]:
    reader = GpuReader("auto")
    reader.open()
    assert reader.available, reader.unavailable_reason
    before = reader.read()
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ALLOC)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_ready(child)
        nvml_pid = find_child(reader, child, before)
        yield Held(child, nvml_pid, before, reader.read())
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
        reader.close()


def skip_if_other_namespace(held: Held) -> None:
    if not held.same_namespace:
        pytest.skip(
            f"NVML reports pids of another PID namespace: our child {held.child.pid} is "
            f"pid {held.nvml_pid} to NVML (a container without the host's PID namespace); "
            f"its figure was {held.measured / MIB:.0f} MiB, per-pid attribution cannot work"
        )


def test_allocation_is_attributed_to_the_child(held: Held) -> None:
    overhead = held.measured - ALLOC
    devices = sorted(held.during.process_bytes[held.nvml_pid])
    print(
        f"\nNVML: child holds {held.measured / MIB:.0f} MiB on GPU {devices} for a "
        f"{ALLOC / MIB:.0f} MiB allocation: CUDA context overhead {overhead / MIB:.0f} MiB"
    )
    assert len(devices) == 1
    assert ALLOC <= held.measured <= ALLOC + MAX_CONTEXT
    index = devices[0]
    grew = (
        next(d for d in held.during.devices if d.index == index).used_bytes
        - next(d for d in held.before.devices if d.index == index).used_bytes
    )
    print(f"NVML: GPU {index} used grew by {grew / MIB:.0f} MiB")
    assert grew >= ALLOC
    skip_if_other_namespace(held)


async def test_tree_usage_sees_the_child(held: Held) -> None:
    skip_if_other_namespace(held)
    monitor = ResourceMonitor("auto")
    await monitor.open()
    try:
        rss, gpu = await monitor.tree_usage(held.child.pid)
        assert rss > 0
        assert ALLOC <= sum(gpu.values()) <= ALLOC + MAX_CONTEXT
        sample = await monitor.sample()
        assert sample.gpu_mode == "nvml"
        assert sample.tree_gpu_bytes([held.child.pid]) == gpu
    finally:
        await monitor.close()


def test_memory_is_gone_after_the_child_exits(held: Held) -> None:
    assert held.child.stdin is not None
    held.child.stdin.close()  # the child's read returns; it exits and the driver frees
    assert held.child.wait(timeout=DEADLINE_S) == 0
    reader = GpuReader("auto")
    reader.open()
    try:
        wait_for_sync(
            lambda: held.nvml_pid not in reader.read().process_bytes,
            timeout=DEADLINE_S,
            what="NVML to drop the exited child",
        )
    finally:
        reader.close()
