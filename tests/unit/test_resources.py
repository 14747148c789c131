"""``helixd.resources``: GpuReader against the fake NVML, RAM figures, the monitor.

The fake ``pynvml`` (``tests/fakes/nvml/pynvml.py``) is loaded afresh for each test under
its own module name and handed to ``GpuReader``, so the real ``pynvml`` stays untouched
for the no-driver test. Per-process allocations need live pids, so those tests start
small idle children; the RAM tests start a real process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from helixd.resources import monitor as monitor_module
from helixd.resources import ram
from helixd.resources.gpu import GpuReader, GpuReadError, GpuSelection, GpuSelectionError
from helixd.resources.monitor import ResourceMonitor, ResourceSample
from tests.conftest import wait_for_sync

FAKE_NVML = Path(__file__).resolve().parents[1] / "fakes" / "nvml" / "pynvml.py"
MIB = 1024 * 1024
GIB = 1024 * MIB
DEVICES = [
    {
        "name": "NVIDIA GeForce RTX 4090 (fake)",
        "uuid": "GPU-00000000-4090-0000-0000-000000000000",
        "total_mib": 24576,
        "baseline_used_mib": 300,
    },
    {
        "name": "NVIDIA RTX A4000 (fake)",
        "uuid": "GPU-11111111-a400-0000-0000-000000000000",
        "total_mib": 16384,
        "baseline_used_mib": 200,
    },
]
IDLE = [sys.executable, "-c", "import sys; sys.stdin.read()"]  # lives until stdin closes


def load_fake_nvml() -> ModuleType:
    """A fresh copy of the fake ``pynvml`` under a name of its own."""
    name = "helixd_test_fake_pynvml"
    spec = importlib.util.spec_from_file_location(name, FAKE_NVML)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the module looks itself up there to make its error classes
    spec.loader.exec_module(module)
    return module


@dataclass
class FakeGpus:
    """The fake NVML module and its state directory."""

    nvml: ModuleType
    root: Path

    def reader(self, selection: GpuSelection = "auto") -> GpuReader:
        return GpuReader(selection, nvml=self.nvml)

    def hold(self, pid: int, *entries: tuple[int, int]) -> None:
        """Record that ``pid`` holds bytes on devices: ``(device index, bytes)`` pairs."""
        data = [{"device": index, "bytes": size} for index, size in entries]
        (self.root / "procs" / f"{pid}.json").write_text(json.dumps(data))

    def faults(self, **faults: Any) -> None:
        (self.root / "faults.json").write_text(json.dumps(faults))

    def monitor(self, selection: GpuSelection = "auto") -> ResourceMonitor:
        return ResourceMonitor(selection, reader_factory=lambda s: GpuReader(s, nvml=self.nvml))


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGpus:
    (tmp_path / "procs").mkdir()
    (tmp_path / "devices.json").write_text(json.dumps(DEVICES))
    monkeypatch.setenv("HELIXD_FAKE_NVML_DIR", str(tmp_path))
    return FakeGpus(load_fake_nvml(), tmp_path)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start children that are killed and reaped at the end of the test."""
    children: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str] = IDLE) -> subprocess.Popen[bytes]:
        # Own process group: the teardown kills grandchildren too, which would otherwise
        # outlive the test (polling for a cue that never comes) and load the machine.
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
        children.append(child)
        return child

    yield start
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        if child.stdin is not None:
            child.stdin.close()


def is_zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


# --- GpuReader: opening and selection ---------------------------------------------------


def test_auto_reads_every_device(fake: FakeGpus) -> None:
    reader = fake.reader()
    reader.open()
    assert reader.available and reader.unavailable_reason == ""
    reading = reader.read()
    assert [d.index for d in reading.devices] == [0, 1]
    first = reading.devices[0]
    assert first.name == "NVIDIA GeForce RTX 4090 (fake)"
    assert first.uuid == "GPU-00000000-4090-0000-0000-000000000000"  # decoded from bytes
    assert first.total_bytes == 24576 * MIB
    assert first.used_bytes == 300 * MIB
    assert first.free_bytes == first.total_bytes - first.used_bytes
    assert reading.process_bytes == {}
    reader.close()


def test_selection_none_never_touches_nvml(fake: FakeGpus) -> None:
    reader = fake.reader("none")
    reader.open()
    assert not reader.available
    assert reader.unavailable_reason == 'disabled by resources.gpus = "none"'
    assert fake.nvml._refcount == 0
    assert reader.read().devices == ()
    reader.close()


def test_selection_of_indices_reads_only_those(fake: FakeGpus) -> None:
    reader = fake.reader([1, 1])
    reader.open()
    assert [d.index for d in reader.read().devices] == [1]
    reader.close()


def test_selecting_a_missing_gpu_names_it_and_the_gpus_present(fake: FakeGpus) -> None:
    reader = fake.reader([0, 5])
    with pytest.raises(GpuSelectionError) as caught:
        reader.open()
    message = str(caught.value)
    assert "GPU 5" in message
    assert "0 (NVIDIA GeForce RTX 4090 (fake))" in message
    assert "1 (NVIDIA RTX A4000 (fake))" in message
    assert "resources.gpus" in message
    assert caught.value.missing == (5,)
    assert fake.nvml._refcount == 0  # NVML is shut down again before the error leaves
    assert not reader.available


def test_no_devices_is_unavailable_not_an_error(fake: FakeGpus) -> None:
    (fake.root / "devices.json").write_text("[]")
    reader = fake.reader()
    reader.open()
    assert not reader.available
    assert reader.unavailable_reason == "NVML found no NVIDIA GPU"
    assert fake.nvml._refcount == 0


def test_missing_library_is_unavailable_with_the_nvml_message(
    fake: FakeGpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HELIXD_FAKE_NVML_DIR")
    selections: list[GpuSelection] = ["auto", [0]]
    for selection in selections:
        reader = fake.reader(selection)
        reader.open()
        assert not reader.available
        assert reader.unavailable_reason == (
            "no NVIDIA driver (NVML: NVML Shared Library Not Found)"
        )
        reader.close()  # nothing to shut down, and no error for it


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (9, "no NVIDIA driver (NVML: Driver Not Loaded)"),
        (18, "NVML could not start: RM has detected an NVML/RM version mismatch."),
        (4, "NVML could not start: Insufficient Permissions"),
    ],
)
def test_init_failures_are_unavailable_with_reason(fake: FakeGpus, code: int, reason: str) -> None:
    fake.faults(nvmlInit=code)
    reader = fake.reader()
    reader.open()
    assert not reader.available
    assert reader.unavailable_reason == reason


def test_real_pynvml_without_a_driver_is_unavailable() -> None:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present here; tests/gpu covers the real NVML")
    selections: list[GpuSelection] = ["auto", [0]]
    for selection in selections:
        reader = GpuReader(selection)
        reader.open()
        assert not reader.available
        assert reader.unavailable_reason.startswith("no NVIDIA driver (NVML: ")
        assert reader.read().devices == ()
        reader.close()


def test_a_device_that_cannot_be_described_is_left_out(fake: FakeGpus) -> None:
    fake.faults(nvmlDeviceGetName={"0": 15})
    reader = fake.reader()
    reader.open()
    assert [d.index for d in reader.read().devices] == [1]
    reader.close()
    only = fake.reader([0])
    only.open()
    assert not only.available
    assert only.unavailable_reason == "no selected GPU can be read: GPU 0 unreadable: GPU is lost"


def test_close_shuts_nvml_down_once(fake: FakeGpus) -> None:
    reader = fake.reader()
    reader.open()
    assert fake.nvml._refcount == 1
    reader.close()
    reader.close()
    assert fake.nvml._refcount == 0
    assert not reader.available and reader.unavailable_reason == "GPU reader closed"
    assert reader.read().devices == ()


def test_names_as_bytes_from_older_nvidia_ml_py(
    fake: FakeGpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = fake.nvml.nvmlDeviceGetName
    monkeypatch.setattr(fake.nvml, "nvmlDeviceGetName", lambda h: original(h).encode())
    reader = fake.reader([0])
    reader.open()
    assert reader.read().devices[0].name == "NVIDIA GeForce RTX 4090 (fake)"
    reader.close()


def test_non_string_selection_is_refused() -> None:
    with pytest.raises(ValueError, match="auto"):
        GpuReader("all")  # type: ignore[arg-type]


# --- GpuReader: reading ---------------------------------------------------------------


def test_per_process_bytes_and_device_totals(fake: FakeGpus, spawn: Any) -> None:
    first, second = spawn(), spawn()
    fake.hold(first.pid, (0, 2 * GIB))
    fake.hold(second.pid, (0, 1 * GIB), (1, 3 * GIB))
    reader = fake.reader()
    reader.open()
    reading = reader.read()
    assert reading.process_bytes == {
        first.pid: {0: 2 * GIB},
        second.pid: {0: 1 * GIB, 1: 3 * GIB},
    }
    gpu0, gpu1 = reading.devices
    assert gpu0.used_bytes == 300 * MIB + 3 * GIB
    assert gpu1.used_bytes == 200 * MIB + 3 * GIB
    assert gpu1.free_bytes == 16384 * MIB - gpu1.used_bytes
    reader.close()


def test_selected_devices_only_in_process_bytes(fake: FakeGpus, spawn: Any) -> None:
    child = spawn()
    fake.hold(child.pid, (0, GIB), (1, 2 * GIB))
    reader = fake.reader([1])
    reader.open()
    assert reader.read().process_bytes == {child.pid: {1: 2 * GIB}}
    reader.close()


def test_a_dead_process_frees_its_memory(fake: FakeGpus, spawn: Any) -> None:
    child = spawn()
    fake.hold(child.pid, (0, 4 * GIB))
    reader = fake.reader([0])
    reader.open()
    assert reader.read().process_bytes == {child.pid: {0: 4 * GIB}}
    child.kill()
    # Not reaped yet: a zombie holds no GPU memory, as with a real driver.
    wait_for_sync(lambda: is_zombie(child.pid), what="the killed child to become a zombie")
    reading = reader.read()
    assert reading.process_bytes == {}
    assert reading.devices[0].used_bytes == 300 * MIB
    assert not (fake.root / "procs" / f"{child.pid}.json").exists()  # stale file removed
    child.wait()
    reader.close()


def test_unknown_process_size_counts_as_zero_and_lists_combine_by_max(
    fake: FakeGpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    def entry(pid: int, used: int | None) -> Any:
        return fake.nvml.nvmlFriendlyObject({"pid": pid, "usedGpuMemory": used})

    compute = [entry(10, None), entry(11, 5 * MIB), entry(12, 1 * MIB), entry(12, 2 * MIB)]
    graphics = [entry(11, 5 * MIB), entry(13, 7 * MIB)]
    monkeypatch.setattr(fake.nvml, "nvmlDeviceGetComputeRunningProcesses", lambda h: compute)
    monkeypatch.setattr(fake.nvml, "nvmlDeviceGetGraphicsRunningProcesses", lambda h: graphics)
    reader = fake.reader([0])
    reader.open()
    # 11 has compute and graphics contexts, listed in both with its one figure; 12 has
    # two entries in one list (two MIG instances), which are distinct memory.
    assert reader.read().process_bytes == {
        10: {0: 0},
        11: {0: 5 * MIB},
        12: {0: 3 * MIB},
        13: {0: 7 * MIB},
    }
    reader.close()


def test_old_driver_falls_back_to_v2_process_queries(fake: FakeGpus, spawn: Any) -> None:
    child = spawn()
    fake.hold(child.pid, (0, GIB))
    # 13 = Function Not Found on the _v3 entry point: the real module's unversioned call
    # turns that into NVMLLibraryMismatchError.
    fake.faults(nvmlDeviceGetComputeRunningProcesses=13, nvmlDeviceGetGraphicsRunningProcesses=13)
    reader = fake.reader([0])
    reader.open()
    assert reader.read().process_bytes == {child.pid: {0: GIB}}
    assert reader.read().process_bytes == {child.pid: {0: GIB}}  # and keeps using _v2
    reader.close()


def test_process_lists_not_supported_keep_device_figures(
    fake: FakeGpus, spawn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    child = spawn()
    fake.hold(child.pid, (0, GIB))
    fake.faults(nvmlDeviceGetComputeRunningProcesses=3)
    reader = fake.reader([0])
    reader.open()
    with caplog.at_level(logging.WARNING, logger="helixd.resources"):
        first, second = reader.read(), reader.read()
    assert first.process_bytes == second.process_bytes == {}
    assert first.devices[0].used_bytes == 300 * MIB + GIB
    assert len([r for r in caplog.records if "Not Supported" in r.message]) == 1
    reader.close()


def test_a_device_failing_to_read_raises_with_its_index(fake: FakeGpus) -> None:
    reader = fake.reader()
    reader.open()
    fake.faults(nvmlDeviceGetMemoryInfo={"1": 15})
    with pytest.raises(GpuReadError) as caught:
        reader.read()
    assert caught.value.index == 1
    assert str(caught.value) == "reading GPU 1 failed (NVML: GPU is lost)"
    reader.close()


# --- RAM ----------------------------------------------------------------------------

TREE_PARENT = textwrap.dedent(
    """
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
    child.wait()
    """
)
TREE_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    here = Path(sys.argv[1])
    (here / "pid.tmp").write_text(str(os.getpid()))
    os.replace(here / "pid.tmp", here / "pid")
    while not (here / "go").exists():
        time.sleep(0.01)  # the child's own poll for the test's cue
    blob = b"x" * (50 * 1024 * 1024)  # written, so resident
    (here / "done").write_text("")
    signal.pause()
    """
)


def test_host_memory_is_plausible() -> None:
    memory = ram.host_memory()
    assert 0 < memory.available_bytes <= memory.total_bytes
    assert memory.total_bytes == psutil.virtual_memory().total


def test_tree_covers_descendants_and_sums_their_rss(tmp_path: Path, spawn: Any) -> None:
    parent = spawn([sys.executable, "-c", TREE_PARENT, TREE_CHILD, str(tmp_path)])
    wait_for_sync(lambda: (tmp_path / "pid").exists(), what="the grandchild to start")
    grandchild = int((tmp_path / "pid").read_text())
    assert ram.process_tree(parent.pid) == [parent.pid, grandchild]
    before = ram.tree_rss_bytes(parent.pid)
    assert before >= ram.tree_rss_bytes(grandchild) > 0
    (tmp_path / "go").write_text("")
    wait_for_sync(lambda: (tmp_path / "done").exists(), what="the grandchild to allocate")
    grown = ram.tree_rss_bytes(parent.pid) - before
    assert 45 * MIB <= grown <= 60 * MIB, f"tree RSS grew by {grown / MIB:.1f} MiB"
    os.kill(grandchild, signal.SIGKILL)
    parent.wait()  # the parent reaps the grandchild, then exits itself
    assert ram.process_tree(parent.pid) == []
    assert ram.tree_rss_bytes(parent.pid) == 0


def test_a_zombie_is_no_tree(spawn: Any) -> None:
    child = spawn()
    child.kill()
    wait_for_sync(lambda: is_zombie(child.pid), what="the killed child to become a zombie")
    assert ram.process_tree(child.pid) == []
    assert ram.tree_rss_bytes(child.pid) == 0


def test_gone_and_impossible_pids() -> None:
    assert ram.process_tree(0) == [] and ram.process_tree(-5) == []
    assert ram.tree_rss_bytes(2**22 + 12345) == 0  # above the default pid_max


def test_a_process_vanishing_mid_walk_is_skipped(
    spawn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = spawn([sys.executable, "-c", TREE_PARENT, "import sys; sys.stdin.read()"])
    wait_for_sync(lambda: len(ram.process_tree(tree.pid)) == 2, what="the idle grandchild")
    grandchild = ram.process_tree(tree.pid)[1]
    real = psutil.Process.memory_info

    def vanishing(process: psutil.Process) -> Any:
        if process.pid == grandchild:  # exits between the walk and the read
            raise psutil.NoSuchProcess(process.pid)
        return real(process)

    monkeypatch.setattr(psutil.Process, "memory_info", vanishing)
    pids, rss = ram.tree_pids_rss(tree.pid)
    assert pids == [tree.pid] and rss > 0


# --- ResourceMonitor ------------------------------------------------------------------


async def test_sample_combines_gpu_and_ram(fake: FakeGpus, spawn: Any) -> None:
    child = spawn()
    fake.hold(child.pid, (0, 2 * GIB), (1, GIB))
    monitor = fake.monitor()
    await monitor.open()
    assert monitor.mode == "nvml" and monitor.note == ""
    sample = await monitor.sample()
    assert sample.gpu_mode == "nvml" and sample.gpu_note == "" and sample.gpu_age_s == 0.0
    assert [d.index for d in sample.gpus] == [0, 1]
    assert sample.ram.total_bytes == psutil.virtual_memory().total
    assert sample.process_gpu_bytes == {child.pid: {0: 2 * GIB, 1: GIB}}
    assert sample.tree_gpu_bytes([child.pid, child.pid, 1]) == {0: 2 * GIB, 1: GIB}
    assert sample.tree_gpu_bytes([]) == {}
    await monitor.close()
    assert monitor.mode == "ram-only"


async def test_sample_is_one_thread_call(fake: FakeGpus, monkeypatch: pytest.MonkeyPatch) -> None:
    monitor = fake.monitor()
    await monitor.open()
    calls: list[str] = []
    real = asyncio.to_thread

    async def counting(function: Callable[..., Any], *args: Any) -> Any:
        calls.append(function.__name__)
        return await real(function, *args)

    monkeypatch.setattr(monitor_module.asyncio, "to_thread", counting)
    await monitor.sample()
    assert len(calls) == 1
    calls.clear()
    await monitor.tree_usage(os.getpid())
    assert len(calls) == 1
    monkeypatch.undo()
    await monitor.close()


async def test_ram_only_without_gpus(fake: FakeGpus) -> None:
    monitor = fake.monitor("none")
    await monitor.open()
    sample = await monitor.sample()
    assert sample.gpu_mode == "ram-only" and monitor.mode == "ram-only"
    assert sample.gpu_note == 'disabled by resources.gpus = "none"'
    assert sample.gpus == () and sample.process_gpu_bytes == {}
    assert sample.ram.available_bytes > 0
    await monitor.close()


async def test_selection_error_leaves_open(fake: FakeGpus) -> None:
    with pytest.raises(GpuSelectionError):
        await fake.monitor([3]).open()


async def test_read_error_keeps_last_figures_and_warns_once(
    fake: FakeGpus, spawn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    child = spawn()
    fake.hold(child.pid, (0, GIB))
    monitor = fake.monitor()
    await monitor.open()
    good = await monitor.sample()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="helixd.resources"):
        fake.faults(nvmlDeviceGetMemoryInfo={"1": 15})
        failed = [await monitor.sample() for _ in range(3)]
        fake.faults(nvmlDeviceGetMemoryInfo={"1": 999})
        other = await monitor.sample()
        fake.faults()
        recovered = await monitor.sample()
    for sample in failed:
        assert sample.gpus == good.gpus
        assert sample.process_gpu_bytes == good.process_gpu_bytes
        assert sample.gpu_mode == "nvml"
        assert sample.gpu_note == (
            "reading GPU 1 failed (NVML: GPU is lost); showing the last good GPU figures"
        )
        assert sample.gpu_age_s == sample.taken_at - good.taken_at > 0
    assert "Unknown Error" in other.gpu_note
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # once per distinct failure, not once per sample
    assert any("work again" in r.message for r in caplog.records if r.levelno == logging.INFO)
    assert recovered.gpu_note == "" and recovered.gpu_age_s == 0.0
    await monitor.close()


async def test_first_read_failing_has_no_figures(fake: FakeGpus) -> None:
    monitor = fake.monitor()
    fake.faults(nvmlDeviceGetMemoryInfo={"0": 15})
    await monitor.open()
    sample = await monitor.sample()
    assert sample.gpu_mode == "nvml" and sample.gpus == ()
    assert sample.gpu_note.endswith("; no GPU figures yet")
    await monitor.close()


async def test_tree_usage_counts_descendants(fake: FakeGpus, tmp_path: Path, spawn: Any) -> None:
    parent = spawn([sys.executable, "-c", TREE_PARENT, TREE_CHILD, str(tmp_path)])
    wait_for_sync(lambda: (tmp_path / "pid").exists(), what="the grandchild to start")
    grandchild = int((tmp_path / "pid").read_text())
    fake.hold(grandchild, (1, 3 * GIB))
    monitor = fake.monitor()
    await monitor.open()
    rss, gpu = await monitor.tree_usage(parent.pid)
    assert rss > 0 and gpu == {1: 3 * GIB}
    fake.faults(nvmlDeviceGetMemoryInfo={"0": 15})
    assert (await monitor.tree_usage(parent.pid))[1] == {1: 3 * GIB}  # the last good figures
    fake.faults()
    assert await monitor.tree_usage(2**22 + 12345) == (0, {})
    await monitor.close()


def test_sample_default_age_keeps_old_constructors_working() -> None:
    sample = ResourceSample(
        gpus=(),
        ram=ram.HostMemory(1, 1),
        gpu_mode="ram-only",
        gpu_note="x",
        process_gpu_bytes={},
        taken_at=0.0,
    )
    assert sample.gpu_age_s == 0.0
