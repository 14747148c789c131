"""Residency: which models are in memory. A pure decision core plus an executor that acts.

The surface others use is exported here: :class:`Residency` (frozen
:class:`ModelStatus` views, :meth:`~Residency.lease`, the operator's actions and its
:attr:`~Residency.events`), the event types, and the catalog that builds the models from
the config. The rest (the ledger, the entries, the policies) is the package's own.
"""

from helixd.errors import ResidencyError
from helixd.scheduler.catalog import Catalog, build_adapters, build_entries
from helixd.scheduler.core import ModelState
from helixd.scheduler.events import (
    Changed,
    CountsChanged,
    Event,
    Evicted,
    LoadEnded,
    Measured,
    StateChanged,
)
from helixd.scheduler.residency import Residency
from helixd.scheduler.views import ModelStatus

__all__ = [
    "Catalog",
    "Changed",
    "CountsChanged",
    "Event",
    "Evicted",
    "LoadEnded",
    "Measured",
    "ModelState",
    "ModelStatus",
    "Residency",
    "ResidencyError",
    "StateChanged",
    "build_adapters",
    "build_entries",
]
