"""A fake GPU model server: "allocates" GPU memory on the fake NVML, then serves echo.

    python tests/fakes/gpu_holder.py --mib N [--load-seconds S] -- [echo provider flags]
    python tests/fakes/gpu_holder.py --model-file M.json -- [echo provider flags]

A "model file" is JSON ``{"mib": N, "load_seconds": S}``: like a real server, the holder
learns from its model file how much memory the model takes, so a process-per-model
provider template (``--model-file {model_path}``) serves models of different sizes.

It plays a model server such as llama.cpp or vLLM against the fake ``pynvml`` in
``tests/fakes/nvml``: it picks its device the way CUDA does (the first entry of
``CUDA_VISIBLE_DEVICES``, an index or a ``GPU-`` UUID prefix; unset means device 0),
registers its allocation in ``$HELIXD_FAKE_NVML_DIR/procs/<pid>.json`` (atomically),
growing to N MiB over ``--load-seconds`` as a loading model does, and then runs the echo
provider in this same process with the arguments after ``--``, so the pid that holds the
memory is the pid that serves. The memory is freed when the process exits, because the
fake counts only live pids.

Exit status: 2 when no device is visible (``CUDA_VISIBLE_DEVICES`` empty, ``-1``, or an
unknown device; no ``HELIXD_FAKE_NVML_DIR``), 1 with ``CUDA out of memory: …`` on stderr
when the device has too little free memory (checked under a lock, so concurrent loads
cannot over-commit a device between them), else the echo provider's status.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "nvml"))
import pynvml  # the fake: its directory is first on the path now

MIB = 1024 * 1024
LOAD_STEPS = 10


class NoDevice(Exception):
    """CUDA would see no usable device."""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The holder's own flags, and the echo provider's (everything after ``--``)."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="gpu_holder.py")
    parser.add_argument("--mib", type=float, help="MiB to hold once loaded")
    parser.add_argument("--load-seconds", type=float, default=0.0, help="grow over this long")
    parser.add_argument("--model-file", type=Path, help='JSON {"mib": N, "load_seconds": S}')
    args = parser.parse_args(argv[:split])
    if args.model_file is not None:
        model = json.loads(args.model_file.read_text())
        args.mib = float(model["mib"])
        args.load_seconds = float(model.get("load_seconds", args.load_seconds))
    if args.mib is None:
        parser.error("one of --mib or --model-file is required")
    return args, argv[split + 1 :]


def visible_device(devices: list[dict[str, Any]]) -> int:
    """The NVML index of CUDA device 0, as ``CUDA_VISIBLE_DEVICES`` makes it.

    The fake's order is the PCI order CUDA uses with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
    """
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        if not devices:
            raise NoDevice("no CUDA-capable device is detected")
        return 0
    first = value.split(",")[0].strip()
    if not first:
        raise NoDevice("no CUDA-capable device is detected (CUDA_VISIBLE_DEVICES is empty)")
    if first.isdigit() and int(first) < len(devices):
        return int(first)
    if first.startswith("GPU-"):
        matches = [i for i, d in enumerate(devices) if str(d["uuid"]).startswith(first)]
        if len(matches) == 1:
            return matches[0]
    raise NoDevice(f"no CUDA-capable device is detected (CUDA_VISIBLE_DEVICES={value})")


@contextmanager
def device_lock(procs: Path) -> Iterator[None]:
    """Serialize check-and-allocate across holders, as the driver does for cuMemAlloc."""
    with open(procs / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def register(procs: Path, index: int, held: int) -> None:
    """Write this process's allocation atomically (temp file, fsync, rename)."""
    pid = os.getpid()
    entry = {"device": index, "bytes": held, "starttime": pynvml.process_starttime(pid)}
    temp = procs / f".{pid}.json.tmp"
    with open(temp, "w") as out:
        json.dump(entry, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, procs / f"{pid}.json")


def free_bytes(index: int) -> tuple[int, int]:
    """(free, total) bytes of a device, as the fake NVML reports them."""
    pynvml.nvmlInit()
    try:
        memory = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
        return int(memory.free), int(memory.total)
    finally:
        pynvml.nvmlShutdown()


def allocate(procs: Path, index: int, target: int, load_seconds: float, start: int = 0) -> None:
    """Grow this process's allocation to ``target`` bytes; SystemExit(1) when out of memory.

    ``start`` is what this process already holds (registered), so a server that shrank
    (vLLM's sleep) can grow back and needs only the difference free.
    """
    steps = LOAD_STEPS if load_seconds > 0 else 1
    held = start
    for step in range(1, steps + 1):
        want = start + (target - start) * step // steps
        with device_lock(procs):
            free, total = free_bytes(index)
            if want - held > free:
                print(
                    f"CUDA out of memory: tried to allocate {(want - held) / MIB:.2f} MiB "
                    f"(GPU {index}; {total / MIB:.0f} MiB total capacity; "
                    f"{free / MIB:.2f} MiB free; {held / MIB:.2f} MiB held by this process)",
                    file=sys.stderr,
                    flush=True,
                )
                raise SystemExit(1)
            register(procs, index, want)
            held = want
        if step < steps:
            time.sleep(load_seconds / steps)  # models load at a pace, not at once


def main(argv: list[str]) -> int:
    args, echo_argv = parse_args(argv)
    state = os.environ.get(pynvml.ENV_DIR)
    if not state:
        print(f"gpu_holder: no CUDA driver ({pynvml.ENV_DIR} is not set)", file=sys.stderr)
        return 2
    procs = Path(state) / "procs"
    procs.mkdir(parents=True, exist_ok=True)
    try:
        index = visible_device(json.loads((Path(state) / "devices.json").read_text()))
    except (NoDevice, FileNotFoundError) as exc:
        print(f"gpu_holder: CUDA error: {exc}", file=sys.stderr)
        return 2
    allocate(procs, index, int(args.mib * MIB), args.load_seconds)
    print(f"gpu_holder: {os.getpid()} holds {args.mib:g} MiB on GPU {index}", flush=True)

    from helixd.providers.echo import main as echo_main

    return echo_main(echo_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
