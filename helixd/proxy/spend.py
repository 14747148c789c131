"""What remote providers cost today, and the daily budget guard (the cost-spike guard).

Token counts come from the ``usage`` the upstream reports; spend is kept per provider
per UTC day in ``state_dir/spend.json`` (atomic writes), so a restart does not reset it.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helixd.config import ProviderConfig
from helixd.state import atomic_write_json, read_json

log = logging.getLogger("helixd.proxy")

# The tail of an answer kept to find its usage (it comes last, in JSON and in SSE).
SNIFF_BYTES = 16 * 1024


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


class Spending:
    """Per-provider spend today against each remote's ``daily_budget``."""

    def __init__(self, path: Path | None, today: Callable[[], str] = _today) -> None:
        self.path = path
        self._today = today
        self.providers: dict[str, ProviderConfig] = {}
        record = read_json(path, {}) if path is not None else {}
        self.day: str = record.get("day", "") if isinstance(record, dict) else ""
        spent = record.get("spent", {}) if isinstance(record, dict) else {}
        self.spent: dict[str, float] = {
            k: float(v) for k, v in spent.items() if isinstance(v, int | float)
        }
        self._alerted: set[str] = set()

    def configure(self, providers: Mapping[str, ProviderConfig]) -> None:
        """The priced providers (remote ones with a price or a budget)."""
        self.providers = {n: p for n, p in providers.items() if p.kind == "remote"}

    def _roll(self) -> None:
        today = self._today()
        if today != self.day:
            self.day, self.spent, self._alerted = today, {}, set()

    def blocked(self, provider: str) -> str | None:
        """Why ``provider`` is skipped today (past its budget), or None."""
        config = self.providers.get(provider)
        if config is None or config.daily_budget is None:
            return None
        self._roll()
        spent = self.spent.get(provider, 0.0)
        if spent < config.daily_budget:
            return None
        return (
            f"remote {provider} is past its daily budget ({spent:.4f} of "
            f"{config.daily_budget:g} spent today, UTC)"
        )

    def record(self, provider: str, usage: Mapping[str, Any]) -> None:
        """Add one answer's cost; log an alert when this crosses the budget."""
        config = self.providers.get(provider)
        if config is None:
            return
        tokens_in = int(usage.get("prompt_tokens") or 0)
        tokens_out = int(usage.get("completion_tokens") or 0)
        cost = (
            tokens_in * config.price_input_per_mtok + tokens_out * config.price_output_per_mtok
        ) / 1e6
        if cost <= 0:
            return
        self._roll()
        self.spent[provider] = self.spent.get(provider, 0.0) + cost
        reason = self.blocked(provider)
        if reason is not None and provider not in self._alerted:
            self._alerted.add(provider)
            log.error("ALERT: %s; routes skip it until the next UTC day", reason)
        if self.path is not None:
            try:
                atomic_write_json(self.path, {"day": self.day, "spent": self.spent})
            except OSError as exc:
                log.warning("cannot record the spend of %s: %s", provider, exc)

    def report(self) -> dict[str, Any]:
        """For status: spend today per remote provider, and budgets."""
        self._roll()
        return {
            name: {"spent_today": round(self.spent.get(name, 0.0), 6), "budget": p.daily_budget}
            for name, p in self.providers.items()
        }


# One decoder for every answer: making one costs more than decoding a usage object.
_DECODER = json.JSONDecoder()


class UsageSniffer:
    """Keeps the tail of an answer to read its ``usage`` once it is complete.

    Chunks are kept, not concatenated, until the end: O(1) per chunk, one join per answer.
    """

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        """Another chunk of the answer."""
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= SNIFF_BYTES:
            self._size -= len(self._chunks.popleft())

    @property
    def tail(self) -> bytes:
        """The last bytes of the answer (at least SNIFF_BYTES when there were that many)."""
        return b"".join(self._chunks)

    def usage(self) -> dict[str, Any] | None:
        """The last ``"usage": {...}`` object in the answer, if any."""
        text = self.tail.decode(errors="replace")
        at = text.rfind('"usage"')
        while at != -1:
            start = text.find("{", at)
            if start != -1:
                try:
                    found, _ = _DECODER.raw_decode(text, start)
                except ValueError:
                    found = None
                if isinstance(found, dict):
                    return found
            at = text.rfind('"usage"', 0, at)
        return None
