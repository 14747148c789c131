"""A fake GPU host for end-to-end tests: the fake NVML's state dir and model files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"
MiB = 1024**2


class FakeGpuHost:
    """A fake NVML state dir with one 24 GiB GPU, and model files of given sizes."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "nvml"
        (self.dir / "procs").mkdir(parents=True)
        self.models = root / "models"
        self.models.mkdir()
        device = {"name": "NVIDIA GeForce RTX 4090 (fake)", "uuid": "GPU-fake-0"}
        (self.dir / "devices.json").write_text(
            json.dumps([{**device, "total_mib": 24576, "baseline_used_mib": 0}])
        )

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": f"{FAKES / 'nvml'}:{REPO}", "HELIXD_FAKE_NVML_DIR": str(self.dir)}

    def model_file(self, name: str, mib: int) -> Path:
        path = self.models / f"{name}.json"
        path.write_text(json.dumps({"mib": mib}))
        return path

    def used_mib(self) -> int:
        total = 0
        for entry in (self.dir / "procs").glob("*.json"):
            pid = int(entry.stem)
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie":
                total += json.loads(entry.read_text())["bytes"]
        return total // MiB

    def provider(self) -> str:
        return f"""
[resources]
vram_reserve_mib = 512
ram_reserve_mib = 0

[providers.gpu]
kind = "openai"
command = ["{{python}}", "{FAKES / "gpu_holder.py"}", "--model-file", "{{model_path}}",
           "--", "--host", "{{host}}", "--port", "{{port}}", "--model", "{{model}}"]
env = {{ HELIXD_FAKE_NVML_DIR = "{self.dir}", PYTHONPATH = "{REPO}" }}
health = {{ path = "/health", interval_s = 1 }}
start_seconds = 30
stop_timeout_s = 5
"""

    def model(self, name: str, mib: int, declared: bool = True, **keys: Any) -> str:
        lines = [f"[models.{name}]", 'provider = "gpu"', f'path = "{self.model_file(name, mib)}"']
        if declared:
            lines.append(f"vram_mib = {mib}")
        lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
        return "\n".join(lines) + "\n"
