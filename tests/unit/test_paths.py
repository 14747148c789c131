"""helixctl's socket lookup mirrors helixd's paths (helixctl must not import helixd)."""

from __future__ import annotations

import pytest

from helixctl.transport import _default_sockets
from helixd.paths import default_paths


@pytest.mark.parametrize("runtime", ["/run/user/1000", None, "relative/dir"])
def test_helixctl_looks_where_helixd_listens(
    monkeypatch: pytest.MonkeyPatch, runtime: str | None
) -> None:
    if runtime is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    looked = _default_sockets()
    assert str(default_paths("user").socket) in looked
    assert str(default_paths("system").socket) in looked
