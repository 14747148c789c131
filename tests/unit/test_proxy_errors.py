"""OpenAI-shaped errors: the type follows whose fault it is."""

from __future__ import annotations

import pytest

from helixd.proxy.errors import error_type


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (405, "invalid_request_error"),
        (408, "invalid_request_error"),
        (429, "rate_limit_error"),
        (502, "server_error"),
        (507, "server_error"),
    ],
)
def test_the_error_type_follows_the_status(status: int, kind: str) -> None:
    assert error_type(status) == kind
