"""The alert book: what is wrong now, what was wrong lately, and who has been told.

An alert is keyed by what it is about (``provider_down:ollama``, ``disk:/var/lib/helixd``)
so it fires once however often its condition is seen, and resolves once. Every change is
logged, written atomically to ``alerts.json`` in the state dir (active alerts survive a
daemon restart without paging again) and posted to the configured webhooks.

Webhook delivery never holds up the caller: :meth:`AlertBook.fire` and
:meth:`AlertBook.resolve` are plain methods that start a background task per webhook and
return. Deliveries retry transient failures with exponential backoff, are bounded in
number (a dead receiver cannot grow memory), and are cancelled after a grace period by
:meth:`AlertBook.close`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from helixd import __version__
from helixd.config.jobs import SEVERITIES, Webhook
from helixd.state import atomic_write_json, read_json

if TYPE_CHECKING:
    from helixd.jobs.alert_rules import Condition

log = logging.getLogger("helixd.alerts")

SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}
LOG_LEVELS = {
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Statuses worth another attempt: the receiver is overloaded or broken for now. Any other
# 4xx means the request itself is wrong and would fail the same way again.
RETRY_STATUSES = frozenset({429})
_UNREADABLE = object()


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Alert:
    """One alert: firing while ``resolved_at`` is None, then kept in the history."""

    key: str
    severity: str
    message: str
    source: str
    fired_at: float
    resolved_at: float | None = None
    resolution: str = ""

    @property
    def status(self) -> str:
        """``firing`` or ``resolved``."""
        return "firing" if self.resolved_at is None else "resolved"

    def as_json(self) -> dict[str, Any]:
        """The alert for the API, the state file and webhooks (times in UTC and epoch)."""
        return {
            "key": self.key,
            "severity": self.severity,
            "status": self.status,
            "message": self.message,
            "source": self.source,
            "fired_at": _iso(self.fired_at),
            "fired_at_epoch": self.fired_at,
            "resolved_at": _iso(self.resolved_at),
            "resolved_at_epoch": self.resolved_at,
            "resolution": self.resolution,
        }

    @classmethod
    def from_json(cls, data: Any) -> Alert | None:
        """An alert read back from the state file; None when the entry is not one."""
        if not isinstance(data, dict):
            return None
        try:
            resolved = data.get("resolved_at_epoch")
            alert = cls(
                key=str(data["key"]),
                severity=str(data["severity"]),
                message=str(data.get("message", "")),
                source=str(data.get("source", "")),
                fired_at=float(data["fired_at_epoch"]),
                resolved_at=None if resolved is None else float(resolved),
                resolution=str(data.get("resolution", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return alert if alert.severity in SEVERITY_RANK else None


def redact_url(url: str) -> str:
    """The URL without credentials or query string, fit for a log line."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class AlertBook:
    """Active and recently resolved alerts; persisted, logged and sent to webhooks.

    ``path`` is ``state_dir / "alerts.json"`` (None: kept in memory only). ``clock`` gives
    the wall-clock times recorded on alerts. ``retry_base_s`` is the first backoff delay
    between webhook attempts (doubling, capped at ``retry_max_s``); ``max_in_flight``
    bounds the deliveries running at once.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], float] = time.time,
        history: int = 200,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        max_in_flight: int = 64,
    ) -> None:
        self.path = path
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._active: dict[str, Alert] = {}
        self._history: deque[Alert] = deque(maxlen=history)
        self._webhooks: list[Webhook] = []
        # Insertion-ordered, so the oldest delivery is the first one.
        self._deliveries: dict[asyncio.Task[None], str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # Counters for status and tests.
        self.fired = 0
        self.resolved = 0
        self.delivered = 0
        self.failed_deliveries = 0
        self.dropped_deliveries = 0
        self._load()

    # -- the book ---------------------------------------------------------------------

    def configure(self, webhooks: Sequence[Webhook]) -> None:
        """Send later alerts to these webhooks (deliveries under way carry on)."""
        self._webhooks = list(webhooks)

    def fire(self, key: str, severity: str, message: str, *, source: str) -> Alert | None:
        """Raise the alert ``key``; None when it was already firing at this severity or above.

        A higher severity escalates the active alert (logged and delivered again); the
        same or a lower one only refreshes its message.
        """
        if severity not in SEVERITY_RANK:
            raise ValueError(f"unknown severity {severity!r}; expected one of {SEVERITIES}")
        alert = self._active.get(key)
        if alert is None:
            alert = Alert(key, severity, message, source, fired_at=self._clock())
            self._active[key] = alert
        elif SEVERITY_RANK[severity] > SEVERITY_RANK[alert.severity]:
            alert.severity, alert.message = severity, message
        else:
            # Kept in memory only: the disk alert's text changes with every tick (its free
            # GiB), and two fsyncs on the loop every 15 s for that is not worth it; the
            # next real change writes it.
            alert.message = message
            return None
        self.fired += 1
        log.log(LOG_LEVELS[severity], "ALERT [%s] %s: %s", severity, key, message)
        self._save()
        self._deliver(alert)
        return alert

    def resolve(self, key: str, resolution: str = "") -> Alert | None:
        """End the active alert ``key``; None when no such alert is firing."""
        alert = self._active.pop(key, None)
        if alert is None:
            return None
        alert.resolved_at = self._clock()
        alert.resolution = resolution
        self._history.append(alert)
        self.resolved += 1
        log.info("RESOLVED %s: %s", key, resolution or "resolved")
        self._save()
        self._deliver(alert)
        return alert

    def sync(self, source: str, conditions: Sequence[Condition], pending: Collection[str]) -> None:
        """Make ``source``'s active alerts match what its evaluator sees now.

        Each condition fires; an active alert of ``source`` that is neither a condition
        nor pending resolves. Pending keys hold but are not old enough to fire: after a
        restart the evaluator has forgotten how long they held, and a loaded alert must
        neither resolve nor fire again meanwhile.
        """
        for condition in conditions:
            self.fire(condition.key, condition.severity, condition.message, source=source)
        holding = {condition.key for condition in conditions} | set(pending)
        for alert in list(self._active.values()):
            if alert.source == source and alert.key not in holding:
                self.resolve(alert.key, "condition cleared")

    def active(self) -> list[Alert]:
        """The firing alerts, most severe first, then oldest first."""
        return sorted(self._active.values(), key=lambda a: (-SEVERITY_RANK[a.severity], a.fired_at))

    def recent(self, limit: int = 50) -> list[Alert]:
        """Resolved alerts, newest first."""
        return list(reversed(self._history))[:limit]

    def info(self, include_resolved: bool = False) -> dict[str, Any]:
        """``{"active": [...], "resolved": [...]}`` for the API (resolved empty unless asked)."""
        resolved = self.recent() if include_resolved else []
        return {
            "active": [alert.as_json() for alert in self.active()],
            "resolved": [alert.as_json() for alert in resolved],
        }

    def counts(self) -> dict[str, int]:
        """Active alerts per severity, every severity present."""
        counts = dict.fromkeys(SEVERITIES, 0)
        for alert in self._active.values():
            counts[alert.severity] += 1
        return counts

    def stats(self) -> dict[str, int]:
        """Counters since start: firings, resolutions and webhook deliveries."""
        return {
            "fired": self.fired,
            "resolved": self.resolved,
            "delivered": self.delivered,
            "failed_deliveries": self.failed_deliveries,
            "dropped_deliveries": self.dropped_deliveries,
            "deliveries_in_flight": len(self._deliveries),
        }

    @property
    def in_flight(self) -> int:
        """Webhook deliveries not finished yet."""
        return len(self._deliveries)

    # -- persistence ------------------------------------------------------------------

    def _load(self) -> None:
        if self.path is None:
            return
        # read_json says what was wrong with an unreadable file and what became of it.
        record = read_json(self.path, _UNREADABLE, lost="starting with no alerts")
        if record is _UNREADABLE:
            return
        if not isinstance(record, dict):
            log.warning("%s holds no alert record; starting with no alerts", self.path)
            return
        for entry in _entries(record.get("active")):
            alert = Alert.from_json(entry)
            if alert is not None and alert.resolved_at is None:
                self._active[alert.key] = alert
        resolved = [Alert.from_json(entry) for entry in _entries(record.get("resolved"))]
        kept = [a for a in resolved if a is not None and a.resolved_at is not None]
        kept.sort(key=lambda a: a.resolved_at or 0.0)
        self._history.extend(kept)  # the deque keeps the newest ``history`` of them

    def _save(self) -> None:
        if self.path is None:
            return
        record = {
            "active": [alert.as_json() for alert in self.active()],
            "resolved": [alert.as_json() for alert in self.recent(len(self._history))],
        }
        try:
            atomic_write_json(self.path, record)
        except OSError as exc:
            # Losing the record costs a re-fire after a restart; failing the caller (a
            # health check, the proxy) over it would cost far more.
            log.warning("cannot save alerts to %s: %s", self.path, exc)

    # -- webhooks ---------------------------------------------------------------------

    def _deliver(self, alert: Alert) -> None:
        hooks = [
            hook
            for hook in self._webhooks
            if SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[hook.min_severity]
        ]
        if not hooks:
            return
        if self._closed:
            log.debug("alert %s not sent: the alert book is closed", alert.key)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.failed_deliveries += len(hooks)
            log.warning("alert %s not sent to webhooks: no event loop is running", alert.key)
            return
        # Snapshot the payload now: the alert may escalate or resolve before it is sent.
        body = json.dumps(
            {"alert": alert.as_json(), "host": socket.gethostname(), "helixd": __version__}
        ).encode()
        for hook in hooks:
            self._make_room()
            task = loop.create_task(self._send(hook, alert.key, body))
            self._deliveries[task] = alert.key
            task.add_done_callback(self._delivery_done)

    def _make_room(self) -> None:
        while len(self._deliveries) >= self.max_in_flight:
            oldest = next(iter(self._deliveries))
            key = self._deliveries.pop(oldest)
            oldest.cancel()
            self.dropped_deliveries += 1
            log.warning(
                "alert %s: webhook delivery dropped, %d deliveries already pending "
                "(is a webhook receiver down?)",
                key,
                self.max_in_flight,
            )

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._deliveries.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            # _send catches what a delivery can raise; this is a bug, not a receiver fault.
            log.error("webhook delivery crashed", exc_info=task.exception())

    async def _send(self, hook: Webhook, key: str, body: bytes) -> None:
        """POST ``body`` to ``hook``, retrying transient failures; logs the final failure."""
        attempts = hook.retries + 1
        reason = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            try:
                status, text = await self._post(hook, body)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = _describe(exc, hook)
                continue
            except Exception as exc:  # a malformed URL or header: no retry will help
                reason, attempts = _describe(exc, hook), attempt + 1
                break
            if 200 <= status < 300:
                self.delivered += 1
                return
            reason = f"HTTP {status}{': ' + text if text else ''}"
            if status < 500 and status not in RETRY_STATUSES:
                attempts = attempt + 1
                break
        self.failed_deliveries += 1
        log.warning(
            "alert %s: webhook %s failed after %d attempt(s): %s",
            key,
            redact_url(hook.url),
            attempts,
            reason,
        )

    async def _post(self, hook: Webhook, body: bytes) -> tuple[int, str]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": f"helixd/{__version__}"})
        headers = {"Content-Type": "application/json", **hook.headers}
        timeout = aiohttp.ClientTimeout(total=hook.timeout_s)
        async with self._session.post(hook.url, data=body, headers=headers, timeout=timeout) as r:
            text = ""
            if r.status >= 300:
                # A little of the receiver's answer, for the log line that says it refused.
                text = (await r.content.read(200)).decode(errors="replace").strip()
            return r.status, text

    def _backoff(self, attempt: int) -> float:
        return float(min(self.retry_base_s * 2 ** (attempt - 1), self.retry_max_s))

    async def close(self, grace_s: float = 2.0) -> None:
        """Let deliveries in flight finish for up to ``grace_s``, cancel the rest, close HTTP.

        Later alerts are still kept and logged, but no longer sent.
        """
        self._closed = True
        tasks = list(self._deliveries)
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=grace_s)
            if stuck:
                log.warning("%d webhook deliveries cancelled at shutdown", len(stuck))
                self.dropped_deliveries += len(stuck)
                for task in stuck:
                    task.cancel()
                # Cancellation unwinds at the next await; give it a moment, never forever.
                await asyncio.wait(stuck, timeout=1.0)
        if self._session is not None:
            await self._session.close()
            self._session = None


def _entries(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _describe(exc: BaseException, hook: Webhook) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {hook.timeout_s:g} s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
