"""The entry point of ``helixctl``, with a click-free fast path for ``status``.

``helixctl status`` is what scripts and monitoring poll, and importing click alone costs
about 40 ms on a small machine (it imports ``inspect`` and ``typing``), so ``main`` runs
``status`` without click when the command line is that simple (``helixctl.status`` on
``helixctl.context``). Every other command line, ``--help`` included, goes through the
click CLI in ``helixctl.cli``, which uses those same functions, so both paths print the
same thing. Nothing imports this module back: it is the top of helixctl's imports.
"""

from __future__ import annotations

import os
import sys

from helixctl.context import Context
from helixctl.status import show_status


def _fast_status_args(argv: list[str]) -> tuple[str | None, bool] | None:
    """``(socket, as_json)`` for ``[--json] [--socket PATH] status [--json]``, else None."""
    socket_path, as_json, seen_status = os.environ.get("HELIXD_SOCKET") or None, False, False
    args = iter(argv)
    for arg in args:
        if arg == "--json":
            as_json = True
        elif arg == "--socket" and not seen_status:
            socket_path = next(args, None)
            if socket_path is None:
                return None
        elif arg.startswith("--socket=") and not seen_status:
            socket_path = arg.split("=", 1)[1]
        elif arg == "status" and not seen_status:
            seen_status = True
        else:
            return None
    return (socket_path, as_json) if seen_status else None


def main() -> None:
    """Entry point of the ``helixctl`` command."""
    fast = _fast_status_args(sys.argv[1:])
    if fast is not None:
        try:
            show_status(Context(*fast))
        except KeyboardInterrupt:
            sys.exit(130)
        return
    from helixctl.cli import main as click_main

    click_main()
