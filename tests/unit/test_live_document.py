"""The live document: views in, the page's and ``helixctl top``'s document out (pure)."""

from __future__ import annotations

import json
from typing import Any

from helixd.ui.document import LiveInputs, live_document

GIB = 1024**3
KEY = "sk-local-0123456789abcdef"


def model(name: str, **fields: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": name,
        "provider": "llama",
        "state": "unloaded",
        "device": None,
        "vram_bytes": 0,
        "ram_bytes": 0,
        "pinned": False,
        "in_flight": 0,
        "queued": 0,
        "upstream": "http://127.0.0.1:41000",
        "process": {"pid": 12, "command": ["llama-server", "--api-key", KEY]},
    }
    return info | fields


def inputs(**fields: Any) -> LiveInputs:
    base: dict[str, Any] = {
        "version": "0.1.0",
        "host": "box",
        "started_at": 1000.0,
        "summary": "1 provider: 1 ready",
        "models": [
            model("big", state="loaded", device="gpu0", vram_bytes=20 * GIB, last_used=1500.0),
            model("tiny", state="loading", device="gpu0", vram_bytes=2 * GIB),
            model("cpu", state="loaded", device="ram", ram_bytes=3 * GIB),
            model("off"),
        ],
        "eviction_order": ["cpu", "big"],
        "devices": {
            "mode": "nvml",
            "note": "",
            "gpus": [
                {"id": "gpu0", "name": "H100", "total_bytes": 80 * GIB, "used_bytes": 30 * GIB}
            ],
            "ram": {"total_bytes": 64 * GIB, "available_bytes": 40 * GIB},
        },
        "providers": [
            {
                "name": "llama",
                "kind": "llama-cpp",
                "state": "ready",
                "pid": 42,
                "restarts": 0,
                "command": ["llama-server", "--api-key", KEY],
                "log_file": "/var/log/helixd/llama.log",
                "last_exit": {"code": 1, "signal": None, "reason": "x", "description": "exit 1"},
            }
        ],
        "alerts": [{"key": "k", "severity": "error", "message": "m", "fired_at_epoch": 1200.0}],
        "jobs": [
            {
                "name": "health",
                "kind": "health",
                "schedule": "every 5m",
                "enabled": True,
                "running": False,
                "next_run": 2000.0,
                "last_run": {"result": "ok", "message": "", "started": 1400.0, "duration_s": 2.5},
            }
        ],
        "spend": {"cloud": {"spent_today": 0.25, "budget": 5.0}},
        "actions": True,
        "auth": False,
    }
    return LiveInputs(**(base | fields))


def test_memory_bars_split_by_model_and_what_helixd_does_not_own() -> None:
    doc = live_document(inputs(), [], {}, now=1600.0)
    gpu = doc["devices"]["gpus"][0]
    assert gpu["models"] == [{"name": "big", "bytes": 20 * GIB}, {"name": "tiny", "bytes": 2 * GIB}]
    assert (gpu["used_bytes"], gpu["other_bytes"], gpu["total_bytes"]) == (
        30 * GIB,
        8 * GIB,
        80 * GIB,
    )
    ram = doc["devices"]["ram"]
    assert ram["models"] == [{"name": "cpu", "bytes": 3 * GIB}]
    assert (ram["used_bytes"], ram["other_bytes"]) == (24 * GIB, 21 * GIB)


def test_accounted_memory_ahead_of_the_driver_never_shows_negative_other() -> None:
    devices = inputs().devices | {
        "gpus": [{"id": "gpu0", "name": "H100", "total_bytes": 80 * GIB, "used_bytes": 5 * GIB}]
    }
    gpu = live_document(inputs(devices=devices), [], {}, now=0.0)["devices"]["gpus"][0]
    assert gpu["other_bytes"] == 0 and gpu["used_bytes"] == 22 * GIB


def test_models_carry_eviction_order_and_request_rate() -> None:
    doc = live_document(inputs(), [], {"big": 12.0}, now=1600.0)
    by_name = {m["name"]: m for m in doc["models"]}
    assert by_name["cpu"]["evict_rank"] == 1 and by_name["big"]["evict_rank"] == 2
    assert by_name["tiny"]["evict_rank"] is None
    assert by_name["big"]["requests_per_min"] == 12.0 and by_name["off"]["requests_per_min"] == 0


def test_no_secret_or_command_line_reaches_the_document() -> None:
    doc = live_document(inputs(), [], {}, now=1600.0)
    text = json.dumps(doc)
    assert KEY not in text and "command" not in text and "upstream" not in text
    assert "log_file" not in text
    assert doc["providers"][0]["last_exit"] == {"code": 1, "signal": None, "description": "exit 1"}


def test_alerts_jobs_and_spend_in_the_pages_words() -> None:
    doc = live_document(inputs(), [{"time": 1.0}], {}, now=1600.0)
    assert doc["alerts"] == [{"key": "k", "severity": "error", "message": "m", "since": 1200.0}]
    assert doc["jobs"][0]["last_run"]["finished_at"] == 1402.5
    assert doc["spend"] == {"cloud": {"today_usd": 0.25, "budget_usd": 5.0}}
    assert doc["requests"] == [{"time": 1.0}]
    assert doc["ui"] == {"actions": True, "auth": False} and doc["time"] == 1600.0


def test_no_figures_yet() -> None:
    doc = live_document(inputs(devices={"mode": "unknown", "gpus": [], "ram": None}), [], {}, 0.0)
    assert doc["devices"] == {"mode": "unknown", "note": "", "gpus": [], "ram": None}
