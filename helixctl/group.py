"""The click group every helixctl command registers on, and the options they share.

The command modules (``helixctl.cli``, ``helixctl.ops``) import this and add their
commands to :data:`cli`; ``helixctl.cli`` imports them all and is what runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from helixctl.context import Context

pass_ctx = click.make_pass_decorator(Context)
FC = TypeVar("FC", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    envvar="HELIXD_SOCKET",
    help="control socket (default: the user's, then the system one)",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON output")
@click.version_option(package_name="helixd", prog_name="helixctl")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None, as_json: bool) -> None:
    """Control helixd, the local LLM serving supervisor."""
    ctx.obj = Context(socket_path, as_json)


def _seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    # FloatRange lets NaN through (every comparison with it is false).
    if value != value:
        raise click.BadParameter("must be a number of seconds, not nan")
    return value


def timeout_option(default: float, help_text: str, zero_ok: bool = False) -> Callable[[FC], FC]:
    """``--timeout S``: seconds, up to a day; NaN refused."""
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0, max=86400, min_open=not zero_ok),
        callback=_seconds,
        default=default,
        show_default=True,
        help=help_text,
    )


def _json_after_command(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    shared = ctx.find_object(Context)  # set by the group, which runs before the command
    if value and shared is not None:
        shared.as_json = True


def accept_json_everywhere(group: click.Group) -> None:
    """Let ``--json`` follow the command too (``helixctl status --json``), as people type it.

    The group's own ``--json`` comes before the command; this adds the same flag to every
    command and subcommand, setting the one shared :class:`Context`.
    """
    for command in group.commands.values():
        if isinstance(command, click.Group):
            accept_json_everywhere(command)
        if not any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params):
            command.params.append(
                click.Option(
                    ["--json"],
                    is_flag=True,
                    expose_value=False,
                    callback=_json_after_command,
                    help="machine-readable JSON output",
                )
            )
