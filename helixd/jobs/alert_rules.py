"""The alert rules: which conditions of a daemon snapshot deserve an alert, and when.

Pure: :meth:`AlertRules.evaluate` takes a :class:`RulesInput` (what the daemon looks like
now) and the current time, and returns the conditions that have lasted long enough to fire
plus the keys still maturing. It does no I/O and reads no clock; the only state it keeps is
when each timed condition was first seen, so a flapping provider does not page anyone and
a provider that comes back resets its timer. The :class:`~helixd.jobs.alerts.AlertBook`
turns the result into fired and resolved alerts (``AlertBook.sync``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from helixd.config.jobs import AlertsJob

# Process states in which a provider cannot serve. ``backoff`` is a crash loop between
# restarts: down as far as a client is concerned.
DOWN_STATES = frozenset({"failed", "unhealthy", "backoff"})

# ``no_model_servable`` lists this many models; the rest are counted.
LISTED_MODELS = 5

GIB = 1024**3


@dataclass(frozen=True)
class ProviderView:
    """One supervised provider process as the rules see it."""

    name: str
    state: str  # stopped starting ready unhealthy backoff failed stopping
    message: str


@dataclass(frozen=True)
class ModelView:
    """One configured model as the rules see it."""

    name: str
    state: str
    # Could serve a request now or after a load (its provider is up, it is not failed).
    servable: bool
    queued: int


@dataclass(frozen=True)
class DiskView:
    """Free space of the file system holding ``path``."""

    path: str
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class RulesInput:
    """A snapshot of everything the rules look at."""

    providers: Sequence[ProviderView] = ()
    models: Sequence[ModelView] = ()
    budgets_exceeded: Mapping[str, str] = field(default_factory=dict)
    disks: Sequence[DiskView] = ()


@dataclass(frozen=True)
class Condition:
    """A condition that holds and has lasted long enough to be an alert."""

    key: str
    severity: str
    message: str


class AlertRules:
    """Evaluates the alert rules over snapshots, remembering when timed conditions began."""

    def __init__(self, config: AlertsJob) -> None:
        self._config = config
        # Key -> the ``now`` of the first evaluation that saw the condition, for the rules
        # that must last a while before they fire.
        self._since: dict[str, float] = {}

    def configure(self, config: AlertsJob) -> None:
        """Take new thresholds; conditions already being timed keep their start."""
        self._config = config

    def evaluate(self, snapshot: RulesInput, now: float) -> tuple[list[Condition], set[str]]:
        """The conditions that fire at ``now``, and the keys that hold but have not matured."""
        timed = [
            *self._providers_down(snapshot.providers),
            *self._nothing_servable(snapshot.models),
            *self._backlogs(snapshot.models),
        ]
        conditions: list[Condition] = []
        pending: set[str] = set()
        seen: set[str] = set()
        for condition, wait_s in timed:
            seen.add(condition.key)
            since = self._since.setdefault(condition.key, now)
            if now - since >= wait_s:
                conditions.append(condition)
            else:
                pending.add(condition.key)
        # A condition that stopped holding starts from zero the next time it is seen.
        for key in self._since.keys() - seen:
            del self._since[key]
        conditions.extend(self._budgets(snapshot.budgets_exceeded))
        conditions.extend(self._disks(snapshot.disks))
        return conditions, pending

    def _providers_down(self, providers: Sequence[ProviderView]) -> list[tuple[Condition, float]]:
        found = []
        for provider in providers:
            if provider.state not in DOWN_STATES:
                continue
            detail = f": {provider.message}" if provider.message else ""
            message = (
                f"provider {provider.name} is {provider.state}{detail}; "
                f"see `helixctl logs {provider.name}`"
            )
            condition = Condition(f"provider_down:{provider.name}", "error", message)
            found.append((condition, self._config.provider_down_for))
        return found

    def _nothing_servable(self, models: Sequence[ModelView]) -> list[tuple[Condition, float]]:
        if not models or any(model.servable for model in models):
            return []
        listed = ", ".join(f"{m.name} ({m.state})" for m in models[:LISTED_MODELS])
        more = len(models) - LISTED_MODELS
        if more > 0:
            listed += f" and {more} more"
        message = (
            f"all models offline: {listed}; no request can be served — "
            "check `helixctl status` and the providers' logs"
        )
        return [
            (Condition("no_model_servable", "critical", message), self._config.provider_down_for)
        ]

    def _backlogs(self, models: Sequence[ModelView]) -> list[tuple[Condition, float]]:
        limit = self._config.queue_backlog
        found = []
        for model in models:
            if model.queued <= limit:
                continue
            message = (
                f"{model.queued} requests waiting for model {model.name} (more than {limit}); "
                "raise its max_concurrency or add capacity"
            )
            condition = Condition(f"queue_backlog:{model.name}", "warning", message)
            found.append((condition, self._config.queue_backlog_for))
        return found

    @staticmethod
    def _budgets(exceeded: Mapping[str, str]) -> list[Condition]:
        # Spend is already an accumulated figure: no need to wait before saying so.
        return [Condition(f"budget:{name}", "error", reason) for name, reason in exceeded.items()]

    def _disks(self, disks: Sequence[DiskView]) -> list[Condition]:
        threshold = self._config.disk_free_percent
        found = []
        for disk in disks:
            if disk.total_bytes <= 0:
                continue  # not measurable (a pseudo file system): nothing to say
            percent = 100.0 * disk.free_bytes / disk.total_bytes
            if percent >= threshold:
                continue
            severity = "error" if percent < threshold / 2 else "warning"
            message = (
                f"only {disk.free_bytes / GIB:.1f} GiB ({percent:.1f}%) free on the disk "
                f"holding {disk.path} (alert under {threshold:g}%); "
                "free space: old backups, unused models, rotated logs"
            )
            found.append(Condition(f"disk:{disk.path}", severity, message))
        return found
