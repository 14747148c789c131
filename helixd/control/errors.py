"""The control API's table: each error code it answers with, and its HTTP status.

Every ``{"error": {"code", ...}}`` the control API sends has its status here, and only
here: a handler that names a code with a literal status must agree with this table (a
test reads the handlers to check). The residency refusals' statuses are their classes'
(:mod:`helixd.errors`); the endpoint's dialects (:mod:`helixd.proxy.errors`) read the
same ones, and say where and why they differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from helixd.errors import RESIDENCY_REFUSALS, HelixError, ReloadRefused, ResidencyError

CONTROL_STATUS: Final[Mapping[str, int]] = {
    # a request the API does not understand
    "bad_request": 400,
    "cannot_pull": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    # names that are not configured
    "unknown_provider": 404,
    "unknown_job": 404,
    "unknown_backup": 404,
    # the state does not allow it now
    "replaced": 409,  # a process a reload replaced
    ReloadRefused.code: 422,
    "refused": 422,  # a backup that does not verify: nothing was restored
    # a provider cannot do it now (helixd stopping, a wait that timed out: residency's)
    "not_ready": 503,
    "upstream_failed": 502,
    # it was tried and failed
    HelixError.code: 500,
    "start_failed": 500,
    "backup_failed": 500,
    "restore_failed": 500,
    # residency's refusals, and the same words for providers ("stopping", "timeout")
    **{refusal.code: refusal.status for refusal in RESIDENCY_REFUSALS},
    ResidencyError.code: ResidencyError.status,
}

# Codes whose status is not the table's but another's, passed on as it came.
PASSED_THROUGH: Final = frozenset({"http_error"})  # aiohttp's own (404, 405, 413, …)
