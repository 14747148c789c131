"""What an end-to-end test reads back through the real helixctl."""

from __future__ import annotations

import json
from typing import Any


def models(helix: Any) -> dict[str, dict[str, Any]]:
    """``helixctl --json models``, by model name."""
    result = helix.ctl("--json", "models")
    assert result.returncode == 0, result.stderr
    return {m["name"]: m for m in json.loads(result.stdout)["models"]}


def states(helix: Any) -> dict[str, str]:
    """Each model's state."""
    return {name: m["state"] for name, m in models(helix).items()}
