"""Where the tests find llama.cpp's own ``llama-server`` (built by ``make llama-server``).

``make test`` builds it (``tests/tools/build_llama_server.sh``, into a cache outside the
repository) and passes its path in ``HELIXD_TEST_LLAMA_SERVER``; elsewhere the script is
asked where its cache is. When it is not built the tests that need it skip, saying how to
build it — except under ``make test`` (``HELIXD_TEST_REAL_PROVIDERS=1``), where that is a
failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ENV = "HELIXD_TEST_LLAMA_SERVER"
SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "build_llama_server.sh"


def llama_server_binary() -> Path:
    """The built ``llama-server``; skip (or fail under ``make test``) when there is none."""
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        why = f"{ENV}={given} is not an executable file"
    else:
        found = subprocess.run(
            [str(SCRIPT), "--path"], capture_output=True, text=True, timeout=30, check=False
        )
        path = Path(found.stdout.strip())
        why = f"llama.cpp's llama-server is not built (no {path})"
    if path.is_file() and os.access(path, os.X_OK):
        return path
    message = (
        f"{why}: run `make llama-server` (tests/tools/build_llama_server.sh builds it from the "
        f"pinned llama-cpp-python sdist, once) or set {ENV} to a llama-server binary"
    )
    if os.environ.get("HELIXD_TEST_REAL_PROVIDERS") == "1":
        pytest.fail(message)
    pytest.skip(message)
