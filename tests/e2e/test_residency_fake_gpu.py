"""Residency end to end on a fake 24 GiB GPU: the real daemon, real model processes.

Each model is a real process (``tests/fakes/gpu_holder.py``) that "allocates" the GPU
memory its model file declares through the fake NVML, then serves the echo API. helixd
runs with the fake ``pynvml`` first on its PYTHONPATH, so its real NVML code reads the
figures: free memory, and the per-process memory it attributes to each model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import wait_for_sync
from tests.e2e.conftest import BIN
from tests.e2e.gpu_host import FakeGpuHost, MiB
from tests.e2e.views import models


@pytest.fixture
def gpu_host(tmp_path: Path) -> FakeGpuHost:
    return FakeGpuHost(tmp_path)


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def wait_model(helix: Any, name: str, state: str, timeout: float = 30) -> dict[str, Any]:
    wait_for_sync(
        lambda: models(helix)[name]["state"] == state, timeout, what=f"model {name} to be {state}"
    )
    return models(helix)[name]


def load(helix: Any, name: str) -> None:
    result = helix.ctl("load", name, timeout=90)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{name}: loaded on gpu0"


def test_models_beyond_the_gpu_evict_the_least_recently_used(
    helix: Any, gpu_host: FakeGpuHost
) -> None:
    config = gpu_host.provider() + "".join(
        [
            gpu_host.model("a", 8192),
            gpu_host.model("b", 8192),
            gpu_host.model("c", 8192),
            gpu_host.model("measured", 6144, declared=False),
        ]
    )
    h = helix(config, extra_env=gpu_host.env())
    devices = json.loads(h.ctl("--json", "models").stdout)["devices"]
    assert devices["mode"] == "nvml"
    assert devices["gpus"][0]["total_bytes"] == 24576 * MiB
    load(h, "a")
    load(h, "b")
    load(h, "measured")  # no size known: loads into the 7.5 GiB left, then is measured
    m = models(h)["measured"]
    assert m["memory_source"] == "measured"
    assert m["vram_bytes"] == 6144 * MiB  # the fake NVML's per-process figure, exactly
    assert gpu_host.used_mib() == 8192 * 2 + 6144
    a_pid = models(h)["a"]["process"]["pid"]
    load(h, "b")  # b is used again: a is now the least recently used
    load(h, "c")  # 8 GiB more: only evicting a makes room
    after = models(h)
    assert after["a"]["state"] == "unloaded"
    assert after["a"]["message"] == "evicted for a load on gpu0"
    assert {n: after[n]["state"] for n in ("b", "c", "measured")} == dict.fromkeys(
        ("b", "c", "measured"), "loaded"
    )
    assert gone(a_pid)
    assert gpu_host.used_mib() == 8192 * 2 + 6144
    human = h.ctl("models").stdout
    assert "measured   " in human and "declared" in human
    status = h.ctl("status").stdout
    assert "GPU0 NVIDIA GeForce RTX 4090 (fake): 22.0G used, 2.0G free of 24.0G" in status


def test_pinned_model_survives_and_impossible_loads_are_refused_with_reasons(
    helix: Any, gpu_host: FakeGpuHost
) -> None:
    config = gpu_host.provider() + "".join(
        [
            gpu_host.model("router", 8192, pinned=True),
            gpu_host.model("x", 8192),
            gpu_host.model("big", 20480),
        ]
    )
    h = helix(config, extra_env=gpu_host.env())
    router = wait_model(h, "router", "loaded")  # pins load at start, unasked
    load(h, "x")
    refused = h.ctl("load", "big")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "helixctl: big needs 20.0 GiB on GPU0; 7.5 GiB free; pinned: router (8.0 GiB)"
    )
    assert models(h)["x"]["state"] == "loaded"  # nothing evicted for a load that cannot be
    unload = h.ctl("unload", "router")
    assert unload.returncode == 1 and "unpin it first" in unload.stderr
    # The pinned model's process dies: residency notices and loads it again.
    os.kill(router["process"]["pid"], signal.SIGKILL)
    wait_for_sync(
        lambda: (
            (m := models(h)["router"])["state"] == "loaded"
            and m["process"]["pid"] != router["process"]["pid"]
        ),
        30,
        what="router to come back",
    )
    # Unpinned, it is just another model: big now fits once router and x are evicted.
    assert h.ctl("unpin", "router").returncode == 0
    load(h, "big")
    after = models(h)
    assert after["router"]["state"] == "unloaded" and after["x"]["state"] == "unloaded"


def test_idle_model_leaves_after_its_keep_alive(helix: Any, gpu_host: FakeGpuHost) -> None:
    config = gpu_host.provider() + gpu_host.model("brief", 4096, keep_alive="1s")
    config += gpu_host.model("stays", 4096)
    h = helix(config, extra_env=gpu_host.env())
    load(h, "stays")
    load(h, "brief")
    gone = wait_model(h, "brief", "unloaded", timeout=15)
    assert gone["message"] == "idle for 1 s (keep_alive)"
    assert models(h)["stays"]["state"] == "loaded"  # default keep_alive is 10 minutes
    wait_for_sync(lambda: gpu_host.used_mib() == 4096, what="brief's memory to be freed")


def test_a_runtime_pin_outlives_a_helixd_restart(helix: Any, gpu_host: FakeGpuHost) -> None:
    config = gpu_host.provider() + gpu_host.model("x", 4096)
    h = helix(config, extra_env=gpu_host.env())
    pinned = h.ctl("pin", "x", timeout=90)
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.strip() == "x: loaded on gpu0, pinned"
    assert h.stop() == 0
    assert gpu_host.used_mib() == 0  # stopping helixd unloads everything
    h.start(extra_env=gpu_host.env())
    x = wait_model(h, "x", "loaded")
    assert x["pinned"] and x["pin_source"] == "runtime"


def test_a_killed_helixd_leaves_no_model_process_holding_the_gpu(
    helix: Any, gpu_host: FakeGpuHost
) -> None:
    config = gpu_host.provider() + gpu_host.model("x", 4096)
    config += gpu_host.model("slow", 4096, declared=True)
    (gpu_host.models / "slow.json").write_text(json.dumps({"mib": 4096, "load_seconds": 30}))
    h = helix(config, extra_env=gpu_host.env())
    load(h, "x")
    x_pid = models(h)["x"]["process"]["pid"]
    slow = subprocess.Popen([str(BIN / "helixctl"), "load", "slow"], env=h.env)
    wait_for_sync(lambda: models(h)["slow"]["state"] == "loading", what="slow to be loading")
    wait_for_sync(lambda: gpu_host.used_mib() > 4096, what="slow to start allocating")
    h.stop(signal.SIGKILL)
    slow.wait(30)
    # The model processes die with helixd (PR_SET_PDEATHSIG) and free the GPU.
    wait_for_sync(lambda: gpu_host.used_mib() == 0, what="the GPU to be free")
    assert gone(x_pid)
    h.start(extra_env=gpu_host.env())
    assert {m["state"] for m in models(h).values()} == {"unloaded"}
    load(h, "x")  # and the next helixd starts from a clean slate


def test_reload_applies_model_changes_and_restarts_only_reshaped_models(
    helix: Any, gpu_host: FakeGpuHost
) -> None:
    keep = gpu_host.model("keep", 2048)
    base = gpu_host.provider() + gpu_host.model("limits", 2048) + gpu_host.model("resized", 2048)
    h = helix(base + keep + gpu_host.model("dropped", 2048), extra_env=gpu_host.env())
    for name in ("limits", "resized", "dropped", "keep"):
        load(h, name)
    limits_pid = models(h)["limits"]["process"]["pid"]
    h.write_config(
        gpu_host.provider()
        + gpu_host.model("limits", 2048, keep_alive="1h", max_concurrency=8)
        + gpu_host.model("resized", 2048, ctx=1024)  # the context shapes the process
        + keep
        + gpu_host.model("new", 1024)
    )
    result = h.ctl("reload")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "reloaded: models added new; models removed dropped; models changed limits, resized"
    )
    wait_for_sync(
        lambda: models(h)["resized"]["state"] == "unloaded" and "dropped" not in models(h),
        what="the resized model unloaded and the dropped one gone",
    )
    after = models(h)
    assert after["resized"]["message"] == "config changed"
    assert after["limits"]["state"] == "loaded" and after["limits"]["process"]["pid"] == limits_pid
    assert after["limits"]["max_concurrency"] == 8 and after["limits"]["keep_alive_s"] == 3600
    assert after["new"]["state"] == "unloaded"
    wait_for_sync(lambda: gpu_host.used_mib() == 2048 * 2, what="dropped and resized to free")


def test_a_model_goes_to_the_gpu_with_most_free_memory_and_only_sees_that_one(
    helix: Any, gpu_host: FakeGpuHost
) -> None:
    devices = [
        {"name": "GPU A (fake)", "uuid": "GPU-fake-0", "total_mib": 24576, "baseline_used_mib": 0},
        {"name": "GPU B (fake)", "uuid": "GPU-fake-1", "total_mib": 24576, "baseline_used_mib": 0},
    ]
    # Someone else's 10 GiB on GPU 0 (NVML sees it; helixd does not account it).
    devices[0]["baseline_used_mib"] = 10240
    (gpu_host.dir / "devices.json").write_text(json.dumps(devices))
    h = helix(gpu_host.provider() + gpu_host.model("m", 4096), extra_env=gpu_host.env())
    result = h.ctl("load", "m", timeout=90)
    assert result.stdout.strip() == "m: loaded on gpu1", result.stderr
    pid = models(h)["m"]["process"]["pid"]
    held = json.loads((gpu_host.dir / "procs" / f"{pid}.json").read_text())
    assert held["device"] == 1  # CUDA_VISIBLE_DEVICES=1 made the process allocate there
    assert psutil.Process(pid).environ()["CUDA_VISIBLE_DEVICES"] == "1"
