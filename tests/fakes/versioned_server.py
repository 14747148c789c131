"""A tiny provider whose installed version lives in a file, for the update job's tests.

    python tests/fakes/versioned_server.py --version-file F --port P [--model NAME]

It stands in for a provider binary that an update command replaces: the "installation"
is the file F, which the tests' update, version and rollback commands write and read
(see :func:`write_version_argv` and :func:`read_version_argv`). At start the server reads
its version from F and serves ``GET /`` → 200 ``{"version": "..."}`` on 127.0.0.1:P, so a
test can tell which version is running. A version starting with ``broken`` exits 1 at
start with a line on stderr, as a bad release would: the update's health check fails.
``--model`` makes it usable as a process-per-model command (``{model}``); it is echoed in
the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def write_version_argv(version_file: Path, version: str, exit_code: int = 0) -> list[str]:
    """A command line that "installs" ``version`` (writes it to the file), then exits."""
    code = (
        "import pathlib, sys; "
        f"pathlib.Path({str(version_file)!r}).write_text({version!r} + '\\n'); "
        f"print('installed', {version!r}); sys.exit({exit_code})"
    )
    return [sys.executable, "-c", code]


def read_version_argv(version_file: Path) -> list[str]:
    """A command line that prints the installed version (``cat F``, without a shell)."""
    code = f"import pathlib; print(pathlib.Path({str(version_file)!r}).read_text().strip())"
    return [sys.executable, "-c", code]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-file", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="")
    args = parser.parse_args()
    version = args.version_file.read_text().strip()
    if version.startswith("broken"):
        print(f"versioned server: version {version} cannot start", file=sys.stderr, flush=True)
        return 1
    body = json.dumps({"version": version, "model": args.model}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the health probe would fill the log

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"versioned server {version} listening on port {args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
