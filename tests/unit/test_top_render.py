"""``helixctl top``'s picture as data: fixture live documents in, screen lines out.

Every test injects ``now`` and runs in UTC, so the frames are the same on every machine.
"""

from __future__ import annotations

import copy
import json
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from helixctl.top import (
    KEEP_REQUESTS,
    Message,
    _first_snapshot,
    _printable,
    _Reader,
    _records,
    merge_requests,
    render,
)
from helixctl.transport import Unreachable

GIB = 1024**3
NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Clock times in the frame are local: pin the zone so they are the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def model(name: str, **fields: Any) -> dict[str, Any]:
    """A model of the live document: an idle unloaded one unless ``fields`` say otherwise."""
    doc: dict[str, Any] = {
        "name": name,
        "provider": "echo",
        "state": "unloaded",
        "state_since": None,
        "device": None,
        "vram_bytes": 0,
        "ram_bytes": 0,
        "memory_source": "measured",
        "pinned": False,
        "keep_alive_s": 600.0,
        "expires_at": None,
        "last_used": None,
        "in_flight": 0,
        "queued": 0,
        "max_concurrency": 4,
        "message": "",
        "evict_rank": None,
        "requests_per_min": 0.0,
    }
    doc.update(fields)
    return doc


def request(
    seconds_ago: float, model_name: str, status: int = 200, ms: float = 120.0
) -> dict[str, Any]:
    return {
        "time": NOW - seconds_ago,
        "method": "POST",
        "path": "/v1/chat/completions",
        "asked": model_name,
        "route": None,
        "model": model_name,
        "status": status,
        "ms": ms,
        "ttft_ms": 35.0,
        "attempts": 1,
    }


def gpu_doc() -> dict[str, Any]:
    """Two GPUs and host RAM, models in every state, two providers and an alert."""
    return {
        "version": "0.1.0",
        "host": "gpu-box",
        "time": NOW - 1,
        "started_at": NOW - (3 * 3600 + 12 * 60),
        "summary": "2 providers: 1 ready, 1 backoff; models: 3 loaded, 1 loading, 1 failed",
        "ui": {"actions": False},
        "devices": {
            "mode": "nvml",
            "note": "",
            "gpus": [
                {
                    "id": "gpu0",
                    "name": "NVIDIA H100",
                    "total_bytes": 80 * GIB,
                    "used_bytes": 30 * GIB,
                    "models": [
                        {"name": "tiny", "bytes": 4 * GIB},
                        {"name": "qwen2.5-coder-32b", "bytes": 20 * GIB},
                    ],
                    "other_bytes": 6 * GIB,
                },
                {
                    "id": "gpu1",
                    "name": "NVIDIA H100",
                    "total_bytes": 80 * GIB,
                    "used_bytes": 41 * GIB,
                    "models": [{"name": "llama-3.1-70b-instruct", "bytes": 40 * GIB}],
                    "other_bytes": 1 * GIB,
                },
            ],
            "ram": {
                "total_bytes": 256 * GIB,
                "used_bytes": 40 * GIB,
                "models": [{"name": "embed", "bytes": 2 * GIB}],
                "other_bytes": 38 * GIB,
            },
        },
        "models": [
            model(
                "tiny",
                state="loaded",
                device="gpu0",
                vram_bytes=4 * GIB,
                expires_at=NOW + 299,
                last_used=NOW - 301,
                evict_rank=1,
            ),
            model(
                "qwen2.5-coder-32b",
                state="loaded",
                device="gpu0",
                vram_bytes=20 * GIB,
                pinned=True,
                in_flight=2,
                queued=5,
                requests_per_min=12.0,
            ),
            model(
                "llama-3.1-70b-instruct",
                state="loading",
                state_since=NOW - 42,
                device="gpu1",
                vram_bytes=40 * GIB,
                memory_source="estimated",
                queued=1,
            ),
            model(
                "embed",
                state="loaded",
                device="ram",
                ram_bytes=2 * GIB,
                expires_at=NOW + 30,
                evict_rank=2,
            ),
            model("broken", state="failed", message="exited with code 1: CUDA out of memory"),
        ],
        "providers": [
            {
                "name": "ollama",
                "kind": "ollama",
                "state": "ready",
                "pid": 4242,
                "restarts": 1,
                "since": NOW - 3601,
                "uptime_s": 3600.0,
                "message": "",
                "last_exit": None,
            },
            {
                "name": "vllm",
                "kind": "vllm",
                "state": "backoff",
                "pid": None,
                "restarts": 3,
                "since": NOW - 10,
                "uptime_s": None,
                "message": "restarting in 8 s",
                "last_exit": {"code": 1, "signal": None, "description": "exited with code 1"},
            },
        ],
        "requests": [],
        "alerts": [
            {
                "key": "provider:vllm",
                "severity": "error",
                "message": "vllm keeps failing: exited with code 1",
                "since": NOW - 120,
            }
        ],
        "jobs": [],
        "spend": {},
    }


def ram_only_doc() -> dict[str, Any]:
    """No GPU: helixd schedules on host RAM alone (the echo provider's e2e setup)."""
    return {
        "version": "0.1.0",
        "host": "laptop",
        "time": NOW,
        "started_at": NOW - 5,
        "summary": "1 provider: 1 per model; models: 1 loaded, 1 unloaded",
        "ui": {"actions": False},
        "devices": {
            "mode": "ram-only",
            "note": "no NVIDIA driver",
            "gpus": [],
            "ram": {
                "total_bytes": 24 * GIB,
                "used_bytes": 6 * GIB,
                "models": [{"name": "tiny", "bytes": GIB}],
                "other_bytes": 5 * GIB,
            },
        },
        "models": [
            model(
                "tiny",
                state="loaded",
                device="ram",
                ram_bytes=GIB,
                expires_at=NOW + 600,
                evict_rank=1,
            ),
            model("other"),
        ],
        "providers": [],
        "requests": [],
        "alerts": [],
        "jobs": [],
        "spend": {},
    }


def empty_doc() -> dict[str, Any]:
    """A helixd with nothing configured, and no figures yet (ram null)."""
    return {
        "version": "0.1.0",
        "host": "h",
        "time": NOW,
        "started_at": NOW,
        "summary": "no providers; no models",
        "ui": {"actions": False},
        "devices": {"mode": "unknown", "note": "", "gpus": [], "ram": None},
        "models": [],
        "providers": [],
        "requests": [],
        "alerts": [],
        "jobs": [],
        "spend": {},
    }


REQUESTS = [
    request(7 * i, "qwen2.5-coder-32b" if i % 2 else "tiny", ms=100.0 * i) for i in range(12)
]


def row(lines: list[str], first_cell: str) -> str:
    """The line of a table whose first cell is ``first_cell``."""
    found = [line for line in lines if line.split(" ", 1)[0] == first_cell]
    assert len(found) == 1, (first_cell, lines)
    return found[0]


def test_the_80x24_frame_of_a_busy_gpu_host() -> None:
    """The whole picture at the smallest size it must be useful at, line by line."""
    assert render(gpu_doc(), REQUESTS, 80, 24, NOW) == [
        "helixd 0.1.0 on gpu-box   up 3h12m   08:00:00",
        "2 providers: 1 ready, 1 backoff; models: 3 loaded, 1 loading, 1 failed",
        "! error 2m00s: vllm keeps failing: exited with code 1",
        "gpu0 [ti█qwen2.5-coder█othe░                                    ]  30.0/80.0 GiB",
        "gpu1 [llama-3.1-70b-instruct███████░                            ]  41.0/80.0 GiB",
        "ram  [█other░░░                                                 ] 40.0/256.0 GiB",
        "MODEL                   STATE        DEVICE     MEM  IN/Q  REQ/M   KEEP  EVICT",
        "tiny                    loaded       gpu0      4.0G  0/0       0  4m59s  #1",
        "qwen2.5-coder-32b       loaded       gpu0     20.0G  2/5      12      -  pinned",
        "llama-3.1-70b-instruct  loading 42s  gpu1    ~40.0G  0/1       0      -  -",
        "embed                   loaded       ram       2.0G  0/0       0    30s  #2",
        "broken                  failed       -            -  0/0       0      -  -",
        "PROVIDER  KIND    STATE     PID  RESTARTS  UPTIME  NOTE",
        "ollama    ollama  ready    4242         1   1h00m",
        "vllm      vllm    backoff     -         3       -  restarting in 8 s",
        "TIME      MODEL              STATUS   MS  TTFT  TRIES  PATH",
        "08:00:00  tiny                  200    0    35      1  /v1/chat/completions",
        "07:59:53  qwen2.5-coder-32b     200  100    35      1  /v1/chat/completions",
        "07:59:46  tiny                  200  200    35      1  /v1/chat/completions",
        "07:59:39  qwen2.5-coder-32b     200  300    35      1  /v1/chat/completions",
        "07:59:32  tiny                  200  400    35      1  /v1/chat/completions",
        "07:59:25  qwen2.5-coder-32b     200  500    35      1  /v1/chat/completions",
        "07:59:18  tiny                  200  600    35      1  /v1/chat/completions",
        "07:59:11  qwen2.5-coder-32b     200  700    35      1  /v1/chat/completions",
    ]


@pytest.mark.parametrize(
    ("name", "doc", "requests"),
    [
        ("gpus", gpu_doc(), REQUESTS),
        ("ram-only", ram_only_doc(), REQUESTS),
        ("empty", empty_doc(), []),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
@pytest.mark.parametrize(("width", "height"), [(80, 24), (100, 30), (60, 15), (40, 10), (20, 3)])
def test_every_frame_fits_its_screen(
    name: str, doc: dict[str, Any], requests: list[dict[str, Any]], width: int, height: int
) -> None:
    lines = render(doc, requests, width, height, NOW)
    assert 0 < len(lines) <= height
    assert all(len(line) <= width for line in lines), lines
    assert lines[0].startswith("helixd 0.1.0")


def test_a_screen_with_no_room_is_empty() -> None:
    assert render(gpu_doc(), REQUESTS, 0, 24, NOW) == []
    assert render(gpu_doc(), REQUESTS, 80, 0, NOW) == []


def test_empty_lists_and_no_memory_figures() -> None:
    assert render(empty_doc(), [], 80, 24, NOW) == [
        "helixd 0.1.0 on h   up 0s   08:00:00",
        "no providers; no models",
        "",
        "memory: no figures from helixd yet",
        "",
        "no models configured; add [models.NAME] tables to the config",
    ]


def test_a_document_missing_sections_still_renders() -> None:
    """An older or newer helixd may leave keys out; the view shows what there is."""
    lines = render({"version": "0.2.0"}, [], 80, 24, NOW)
    assert lines[0] == "helixd 0.2.0 on ?   08:00:00"


def test_ram_only_mode_shows_the_ram_bar_and_says_why_there_is_no_gpu() -> None:
    lines = render(ram_only_doc(), [request(3, "tiny")], 80, 24, NOW)
    assert lines[:6] == [
        "helixd 0.1.0 on laptop   up 5s   08:00:00",
        "1 provider: 1 per model; models: 1 loaded, 1 unloaded",
        "",
        # 1 GiB of 24 is 2.5 of the 61 cells (3), the 6 GiB used 15.25 (15): "other" 12.
        "ram [ti█other░░░░░░░                                              ] 6.0/24.0 GiB",
        "no GPU in use: RAM-only mode (no NVIDIA driver)",
        "",
    ]
    assert not any(line.startswith("gpu") for line in lines)
    assert not any(line.startswith("PROVIDER") for line in lines)  # none: no section
    assert row(lines, "tiny").split()[:4] == ["tiny", "loaded", "ram", "1.0G"]
    assert row(lines, "other").split()[:3] == ["other", "unloaded", "-"]
    assert row(lines, "07:59:57").split()[:3] == ["07:59:57", "tiny", "200"]


def test_loading_shows_how_long_it_has_taken_so_far() -> None:
    doc = gpu_doc()
    assert "loading 42s" in row(render(doc, [], 80, 24, NOW), "llama-3.1-70b-instruct")
    assert "loading 2m42s" in row(render(doc, [], 80, 24, NOW + 120), "llama-3.1-70b-instruct")
    doc["models"][2]["state_since"] = None  # no start known: no made-up figure
    assert row(render(doc, [], 80, 24, NOW), "llama-3.1-70b-instruct").split()[1:3] == [
        "loading",
        "gpu1",
    ]


def test_a_name_a_little_too_long_narrows_the_gaps_rather_than_being_cut() -> None:
    """At 80 columns "loading 2m42s" leaves two characters too few for gaps of two."""
    lines = render(gpu_doc(), [], 80, 24, NOW + 120)
    assert row(lines, "MODEL") == (
        "MODEL                  STATE         DEVICE    MEM IN/Q REQ/M  KEEP EVICT"
    )
    assert row(lines, "llama-3.1-70b-instruct") == (
        "llama-3.1-70b-instruct loading 2m42s gpu1   ~40.0G 0/1      0     - -"
    )
    # A name that would not fit even so is cut, and the gaps stay two wide.
    doc = gpu_doc()
    doc["models"][2]["name"] = "llama-3.1-70b-instruct-q4_K_M-gguf"
    cut = next(line for line in render(doc, [], 80, 24, NOW) if line.startswith("llama"))
    assert cut.startswith("llama-3.1-70b-instruct…  loading 42s  gpu1")


def test_columns_fit_the_requests_shown_not_the_older_ones_cut_off() -> None:
    old = request(600, "a-model-with-a-name-far-longer-than-the-rest", ms=123456.0)
    lines = render(gpu_doc(), [*REQUESTS, old], 80, 24, NOW)
    assert not any("a-model-with" in line for line in lines)
    assert row(lines, "TIME") == "TIME      MODEL              STATUS   MS  TTFT  TRIES  PATH"
    # On a screen tall enough to show it, the columns make room for it (PATH gives way).
    tall = render(gpu_doc(), [*REQUESTS, old], 80, 60, NOW)
    assert row(tall, "07:50:00") == (
        "07:50:00 a-model-with-a-name-far-longer-than-the-rest    200 123456   35     1"
    )


@pytest.mark.parametrize(
    ("later", "tiny", "embed"),
    [(0, "4m59s", "30s"), (29, "4m30s", "1s"), (31, "4m28s", "0s"), (400, "0s", "0s")],
)
def test_keep_alive_counts_down_and_stops_at_zero(later: float, tiny: str, embed: str) -> None:
    lines = render(gpu_doc(), [], 80, 24, NOW + later)
    assert row(lines, "tiny").split()[6] == tiny
    assert row(lines, "embed").split()[6] == embed
    assert row(lines, "qwen2.5-coder-32b").split()[6] == "-"  # pinned: never expires


def test_evict_order_and_pins_share_a_column() -> None:
    lines = render(gpu_doc(), [], 80, 24, NOW)
    assert row(lines, "tiny").endswith("#1")
    assert row(lines, "embed").endswith("#2")
    assert row(lines, "qwen2.5-coder-32b").endswith("pinned")


def test_provider_uptime_counts_on_from_the_snapshot() -> None:
    lines = render(gpu_doc(), [], 80, 24, NOW + 59)
    assert row(lines, "ollama").split()[-1] == "1h01m"  # 3600 s, plus 60 s since helixd's time


def test_long_names_are_cut_with_an_ellipsis_and_columns_give_way() -> None:
    doc = gpu_doc()
    doc["models"][0]["name"] = "a-very-long-model-name-that-goes-on-and-on-" * 3
    lines = render(doc, [], 80, 24, NOW)
    long_row = next(line for line in lines if line.startswith("a-very"))
    assert "…" in long_row.split()[0]
    assert long_row.split()[1:3] == ["loaded", "gpu0"]  # the name gave way, not the state
    narrow = render(doc, [], 40, 24, NOW)
    heading = next(line for line in narrow if line.startswith("MODEL"))
    assert heading.split() == ["MODEL", "STATE", "MEM", "IN/Q", "KEEP"]
    assert all(len(line) <= 40 for line in narrow)


def test_a_failed_models_message_shows_when_there_is_room() -> None:
    assert "exited with code 1" in row(render(gpu_doc(), [], 120, 40, NOW), "broken")
    assert "exited" not in row(render(gpu_doc(), [], 80, 40, NOW), "broken")


def test_lower_sections_give_way_first() -> None:
    """Short of lines: requests go, then providers; models are cut with a count of the rest."""
    tall = render(gpu_doc(), REQUESTS, 80, 60, NOW)
    assert "" in tall  # room for everything: sections are spaced out
    assert row(tall, "07:58:43")  # the twelfth request, all of them shown
    no_requests = render(gpu_doc(), REQUESTS, 80, 16, NOW)
    assert no_requests[-1] == "vllm      vllm    backoff     -         3       -  restarting in 8 s"
    assert not any(line.startswith("TIME") for line in no_requests)
    cut = render(gpu_doc(), REQUESTS, 80, 10, NOW)
    # Header 2, alert 1, memory 3: 4 lines left, a heading, two of five models and the rest.
    assert cut[6:] == [
        "MODEL              STATE   DEVICE    MEM  IN/Q  REQ/M   KEEP  EVICT",
        "tiny               loaded  gpu0     4.0G  0/0       0  4m59s  #1",
        "qwen2.5-coder-32b  loaded  gpu0    20.0G  2/5      12      -  pinned",
        "… 3 more models",
    ]
    assert len(cut) == 10
    assert not any(line.startswith("PROVIDER") for line in cut)


def test_many_alerts_are_capped_so_memory_stays_on_screen() -> None:
    doc = gpu_doc()
    doc["alerts"] = [
        {"key": f"k{i}", "severity": "warning", "message": f"alert {i}", "since": None}
        for i in range(6)
    ]
    capped = [
        "! warning: alert 0",
        "! warning: alert 1",
        "… 4 more alerts (helixctl alerts)",
    ]
    busy = render(doc, REQUESTS, 80, 24, NOW)  # a full screen: no blank lines between
    assert busy[2:5] == capped
    assert [line.split(" ", 1)[0] for line in busy[5:9]] == ["gpu0", "gpu1", "ram", "MODEL"]
    roomy = render(doc, [], 80, 60, NOW)  # the cap holds even with room to spare
    assert roomy[2:7] == ["", *capped, ""]
    assert roomy[7].startswith("gpu0 [")
    three = render(doc | {"alerts": doc["alerts"][:3]}, [], 80, 24, NOW)
    assert [line for line in three if line.startswith("! ")] == [
        "! warning: alert 0",
        "! warning: alert 1",
        "! warning: alert 2",
    ]


def test_a_bar_gives_every_holder_a_cell_and_never_overflows() -> None:
    doc = ram_only_doc()
    ram = doc["devices"]["ram"]
    ram["models"] = [{"name": f"m{i}", "bytes": 1024} for i in range(100)]  # each far < a cell
    ram["used_bytes"] = ram["total_bytes"] * 2  # a figure off the scale
    ram["other_bytes"] = ram["total_bytes"] * 2
    bar = render(doc, [], 80, 24, NOW)[3]
    assert len(bar) <= 80
    assert bar.startswith("ram [" + "█" * 60)
    assert bar.endswith("] 48.0/24.0 GiB")


def test_a_screen_too_narrow_for_a_bar_keeps_the_figures() -> None:
    lines = render(gpu_doc(), [], 24, 24, NOW)
    first = next(i for i, line in enumerate(lines) if line.startswith("gpu0"))
    # The figures line up on the right, as they do beside the bars.
    assert lines[first : first + 3] == [
        "gpu0  30.0/80.0 GiB",
        "gpu1  41.0/80.0 GiB",
        "ram  40.0/256.0 GiB",
    ]


def test_requests_newest_first_and_without_a_model_named_as_asked() -> None:
    refused = request(1, "ghost", status=404, ms=0.4)
    refused["model"] = None
    lines = render(ram_only_doc(), [request(30, "tiny"), refused], 80, 24, NOW)
    heading = lines.index(next(line for line in lines if line.startswith("TIME")))
    assert lines[heading + 1].split()[:4] == ["07:59:59", "ghost", "404", "0"]
    assert lines[heading + 2].split()[:2] == ["07:59:30", "tiny"]


def test_merge_requests_drops_repeats_and_keeps_the_newest() -> None:
    first = [request(10, "a"), request(5, "b")]
    # The streamed record and the next snapshot's copy of it are one request.
    merged = merge_requests(first, [copy.deepcopy(first[1]), request(1, "c")])
    assert [r["model"] for r in merged] == ["a", "b", "c"]
    many = merge_requests([], [request(i, "m") for i in range(KEEP_REQUESTS + 10)])
    assert len(many) == KEEP_REQUESTS
    assert many[-1]["time"] == NOW  # the newest kept, oldest first
    assert merge_requests([], ["junk", request(1, "d")]) == [request(1, "d")]  # type: ignore[list-item]


def test_ascii_terminals_get_ascii_bars() -> None:
    lines = ["gpu0 [ti█other░ ]", "qwen2.5-c…"]
    assert _printable(lines, "utf-8") == lines
    assert _printable(lines, "ascii") == ["gpu0 [ti#other: ]", "qwen2.5-c~"]
    assert _printable(lines, None) == ["gpu0 [ti#other: ]", "qwen2.5-c~"]
    assert _printable(lines, "no-such-encoding") == ["gpu0 [ti#other: ]", "qwen2.5-c~"]
    # Any other character the terminal cannot show (curses would raise on it) is a "?".
    assert _printable(["modèle → ok", "bad \udc80"], "ascii") == ["mod?le ? ok", "bad ?"]
    assert _printable(["modèle → ok", "bad \udc80"], "utf-8") == ["modèle → ok", "bad ?"]


class FakeResponse:
    """A ``/v1/events`` answer whose body is ``lines``."""

    def __init__(self, *records: Any) -> None:
        self.lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in records]
        self.closed = False

    def iter_lines(self) -> Iterator[bytes]:
        yield from self.lines

    def close(self) -> None:
        self.closed = True


class DownClient:
    """A client for a helixd that is gone: every request is refused."""

    def request(self, method: str, target: str, timeout: float | None) -> Any:
        raise Unreachable("helixd is not running: no control socket at /x.sock.\nStart it")


class DownContext:
    client = DownClient()


SNAPSHOT = {"type": "snapshot", "data": {"version": "0.1.0"}}
REQUEST = {"type": "request", "data": request(1, "tiny")}
END = {"type": "end", "data": {"reason": "helixd is stopping"}}


def test_records_skip_what_makes_no_sense_and_stop_at_the_end() -> None:
    response = FakeResponse(
        SNAPSHOT,
        b"not json",
        b"[1]",
        {"type": "snapshot", "data": 3},
        {"type": "x"},
        REQUEST,
        END,
        SNAPSHOT,
    )
    assert list(_records(response)) == [  # type: ignore[arg-type]
        ("snapshot", SNAPSHOT["data"]),
        ("request", REQUEST["data"]),
        ("end", "helixd is stopping"),  # and the snapshot after it is not read
    ]
    assert list(_records(FakeResponse({"type": "end"}))) == [  # type: ignore[arg-type]
        ("end", "no reason given")
    ]


def next_message(messages: queue.Queue[Message]) -> Message:
    return messages.get(timeout=10)


def test_the_end_record_is_a_lost_stream_and_the_reader_tries_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("helixctl.top.RETRY_S", 0.05)
    first = FakeResponse(SNAPSHOT, REQUEST, END)
    reader = _Reader(DownContext(), first)  # type: ignore[arg-type]
    reader.start()
    try:
        assert next_message(reader.messages) == ("up", None)
        assert next_message(reader.messages) == ("snapshot", SNAPSHOT["data"])
        assert next_message(reader.messages) == ("request", REQUEST["data"])
        assert next_message(reader.messages) == (
            "down",
            "helixd ended the stream (helixd is stopping)",
        )
        assert first.closed
        # Then it tries again, and says why helixd cannot be reached (its first line).
        assert next_message(reader.messages) == (
            "down",
            "helixd is not running: no control socket at /x.sock.",
        )
    finally:
        reader.stopping.set()
        reader.join(10)
    assert not reader.is_alive()


def test_a_stream_that_closes_without_an_end_is_lost_too() -> None:
    reader = _Reader(DownContext(), FakeResponse(SNAPSHOT))  # type: ignore[arg-type]
    reader.start()
    try:
        messages = [next_message(reader.messages) for _ in range(3)]
    finally:
        reader.stopping.set()
        reader.join(10)
    assert messages[2] == ("down", "helixd closed the stream (stopped or restarting)")


def test_once_fails_cleanly_when_the_feed_ends_before_a_snapshot(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        _first_snapshot(FakeResponse(END))  # type: ignore[arg-type]
    assert exited.value.code == 1
    assert "before its first snapshot (helixd is stopping)" in capsys.readouterr().err
    assert _first_snapshot(FakeResponse(REQUEST, SNAPSHOT)) == SNAPSHOT["data"]  # type: ignore[arg-type]


def test_curses_is_imported_only_by_the_full_screen_view() -> None:
    """``helixctl status`` and every other command, ``top --once`` too, go without it."""
    code = (
        "import sys, helixctl.core, helixctl.status, helixctl.cli\n"
        "assert 'helixctl.top' not in sys.modules, 'helixctl.cli imports helixctl.top'\n"
        "import helixctl.top\n"
        "assert 'curses' not in sys.modules and '_curses' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
