"""The budget guard's arithmetic, its day boundary, and finding usage in an answer."""

from __future__ import annotations

import json
from pathlib import Path

from helixd.config import ProviderConfig
from helixd.proxy.spend import Spending, UsageSniffer


def remote(**keys: object) -> ProviderConfig:
    return ProviderConfig.model_validate({"kind": "remote", "url": "https://x.example", **keys})


def test_spend_crosses_the_budget_and_resets_on_a_new_utc_day(tmp_path: Path) -> None:
    day = ["2026-11-23"]
    spending = Spending(tmp_path / "spend.json", today=lambda: day[0])
    prices = {"price_input_per_mtok": 2.0, "price_output_per_mtok": 10.0}
    spending.configure({"cloud": remote(daily_budget=0.01, **prices), "local": remote()})
    spending.record("cloud", {"prompt_tokens": 1000, "completion_tokens": 500})  # 0.007
    assert spending.blocked("cloud") is None
    spending.record("cloud", {"prompt_tokens": 1000, "completion_tokens": 500})  # 0.014
    assert "past its daily budget (0.0140 of 0.01" in (spending.blocked("cloud") or "")
    assert spending.blocked("local") is None  # no budget, never blocked
    saved = json.loads((tmp_path / "spend.json").read_text())
    assert saved["day"] == "2026-11-23" and round(saved["spent"]["cloud"], 6) == 0.014
    again = Spending(tmp_path / "spend.json", today=lambda: day[0])
    again.configure({"cloud": remote(daily_budget=0.01, **prices)})
    assert again.blocked("cloud") is not None  # a restart keeps today's spend
    day[0] = "2026-11-24"
    assert again.blocked("cloud") is None


def test_usage_is_found_at_the_end_of_json_and_of_an_event_stream() -> None:
    whole = UsageSniffer()
    body = {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 3}}
    for piece in (json.dumps(body)[:10].encode(), json.dumps(body)[10:].encode()):
        whole.feed(piece)
    assert whole.usage() == {"prompt_tokens": 3}
    stream = UsageSniffer()
    stream.feed(b'data: {"choices": [{"delta": {"content": "a"}}], "usage": null}\n\n')
    stream.feed(b'data: {"choices": [], "usage": {"completion_tokens": 7}}\n\ndata: [DONE]\n\n')
    assert stream.usage() == {"completion_tokens": 7}
    assert UsageSniffer().usage() is None
