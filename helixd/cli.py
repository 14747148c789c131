"""``helixd``: run the daemon in the foreground, or check a config file.

Exit codes: 0 clean stop or valid config; 1 cannot start or invalid config; 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from helixd import __version__
from helixd.config import ConfigError, default_config_path, describe, load_config
from helixd.lognotes import BARE_FORMAT, TIMED_FORMAT
from helixd.paths import Mode, default_mode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helixd",
        description="Supervisor daemon for local LLM serving. Runs in the foreground; "
        "under systemd use the helixd.service unit.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $HELIXD_CONFIG, else /etc/helixd/helixd.toml for --system "
        "or $XDG_CONFIG_HOME/helixd/helixd.toml for --user)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--system",
        action="store_const",
        const="system",
        dest="mode",
        help="system instance: /etc/helixd, /run/helixd, /var/lib/helixd",
    )
    group.add_argument(
        "--user",
        action="store_const",
        const="user",
        dest="mode",
        help="user instance: XDG config, runtime and state dirs",
    )
    parser.add_argument(
        "--check-config",
        metavar="FILE",
        nargs="?",
        const="",
        help="validate a config file (default: the one helixd would use) and exit",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="override [daemon] log_level",
    )
    parser.add_argument("--version", action="version", version=f"helixd {__version__}")
    return parser


def check_config(path: Path) -> int:
    """Validate ``path``; print the result; 0 when valid, 1 otherwise."""
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: OK ({describe(loaded.config)})")
    return 0


def _setup_logging(level: str) -> None:
    # Under systemd, journald stamps each line itself; a terminal wants the time.
    fmt = BARE_FORMAT if os.environ.get("JOURNAL_STREAM") else TIMED_FORMAT
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run helixd's loop: uvloop's (the endpoint's speed depends on it) unless
    ``HELIXD_LOOP=asyncio`` asks for the standard library's, which also works."""
    log = logging.getLogger("helixd")
    if os.environ.get("HELIXD_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed: the endpoint runs slower on asyncio's loop")
        else:
            log.debug("event loop: uvloop")
            uvloop.run(main)
            return
    log.debug("event loop: asyncio's own")
    asyncio.run(main)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``helixd`` command."""
    args = _parser().parse_args(argv)
    mode: Mode = args.mode or default_mode()
    config_path = Path(args.config) if args.config else default_config_path(mode)
    if args.check_config is not None:
        return check_config(Path(args.check_config) if args.check_config else config_path)
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        print(f"helixd: cannot start: {exc}", file=sys.stderr)
        return 1
    _setup_logging(args.log_level or loaded.config.daemon.log_level)

    from helixd.daemon import Daemon
    from helixd.errors import StartupError
    from helixd.notify import Notifier
    from helixd.supervisor.spec import SpecError

    notifier = Notifier()
    try:
        run_loop(Daemon(loaded, loaded.paths(mode), notifier).run())
    except (StartupError, SpecError) as exc:
        logging.getLogger("helixd").error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
