"""The fake ``pynvml`` loaded under a name of its own, for tests that read fake GPUs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

FAKE_NVML = Path(__file__).resolve().parents[1] / "fakes" / "nvml" / "pynvml.py"


def load_fake_nvml(tag: str) -> ModuleType:
    """Import the fake as ``helixd_test_fake_pynvml_<tag>`` (never as ``pynvml``)."""
    name = f"helixd_test_fake_pynvml_{tag}"
    spec = importlib.util.spec_from_file_location(name, FAKE_NVML)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
