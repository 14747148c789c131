"""``helixctl``: drive helixd over its control socket.

Exit codes (DESIGN.md): 0 done; 1 the operation failed; 2 usage; 3 helixd not reachable.
Commands that talk to the daemon import neither aiohttp, pydantic nor helixd beyond
:mod:`helixd.protocol` (every request is built from its commands, and their help is the
commands' own), so the whole process stays fast; ``config check`` and ``init`` import
``helixd`` lazily.

This module defines the daemon and config commands and imports the other command
modules (``helixctl.ops``), all registering on the group of ``helixctl.group``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from helixctl import ops  # noqa: F401  (registers jobs, run, backup and alerts)
from helixctl.context import EXIT_FAILED, Context, echo, fail
from helixctl.group import accept_json_everywhere, cli, pass_ctx, timeout_option
from helixctl.status import show_status
from helixctl.transport import ProtocolError, Unreachable
from helixd import protocol


@cli.command(help=protocol.Status.help())
@pass_ctx
def status(ctx: Context) -> None:
    show_status(ctx)


@cli.command()
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="the config to check (default: HELIXD_CONFIG, the running helixd's, the default places)",
)
@click.option("--system", "mode", flag_value="system", help="look at the system instance's config")
@click.option("--user", "mode", flag_value="user", help="look at the user instance's config")
@pass_ctx
def diagnose(ctx: Context, config_file: str | None, mode: str | None) -> None:
    """Why doesn't it work? GPU, config, programs, ports, socket, disk, systemd, endpoint.

    One line per check (ok, info, warning or problem), each problem with its fix; exit 1
    when any check is a problem.
    """
    from helixctl.diagnose import run

    run(ctx, config_file, mode)


def _provider_action(
    ctx: Context, command: type[protocol.Command], name: str, wait: bool, timeout: float
) -> None:
    query = {"wait": "1", "timeout": f"{timeout:g}"} if wait else None
    doc = ctx.call(command, query, timeout=timeout + 30 if wait else 180, name=name)
    p = doc["provider"]
    ctx.emit(doc, f"{p['name']}: {p['state']}" + (f" (pid {p['pid']})" if p.get("pid") else ""))


def _provider_command(action: str, command: type[protocol.Command]) -> None:
    """Register ``helixctl ACTION PROVIDER [--wait] [--timeout S]``."""

    @cli.command(name=action, help=command.help())
    @click.argument("provider")
    @click.option("--wait", is_flag=True, help="wait until ready (or failed)")
    @timeout_option(120.0, "seconds to wait with --wait", zero_ok=True)
    @pass_ctx
    def run(ctx: Context, provider: str, wait: bool, timeout: float) -> None:
        _provider_action(ctx, command, provider, wait and action != "stop", timeout)


_provider_command("start", protocol.StartProvider)
_provider_command("stop", protocol.StopProvider)
_provider_command("restart", protocol.RestartProvider)


@cli.command(help=protocol.ListModels.help())
@pass_ctx
def models(ctx: Context) -> None:
    from helixctl.render import MODEL_HEADERS, device_lines, model_rows, table

    doc = ctx.call(protocol.ListModels)
    lines = device_lines(doc.get("devices") or {})
    if doc["models"]:
        lines += ["", table(MODEL_HEADERS, model_rows(doc["models"]))]
    else:
        lines += ["", "no models configured; add [models.NAME] tables to the config"]
    ctx.emit(doc, "\n".join(lines))


def _model_action(ctx: Context, command: type[protocol.Command], name: str, timeout: float) -> None:
    doc = ctx.call(command, {"timeout": f"{timeout:g}"}, timeout=timeout + 30, name=name)
    m = doc["model"]
    asleep = m["state"] == "sleeping"
    where = f" on {m['device']}" if m.get("device") and (asleep or m["state"] == "loaded") else ""
    pinned = ", pinned" if m.get("pinned") else ""
    # vLLM's sleep mode: the first unload only frees the GPU; say how to stop it.
    hint = " (weights in host RAM; unload again to stop it)" if asleep else ""
    ctx.emit(doc, f"{m['name']}: {m['state']}{where}{pinned}{hint}")


def _model_command(action: str, command: type[protocol.Command]) -> None:
    """Register ``helixctl ACTION MODEL [--timeout S]``."""

    @cli.command(name=action, help=command.help())
    @click.argument("model")
    @timeout_option(600.0, "seconds to wait for the load (or for room to be made)")
    @pass_ctx
    def run(ctx: Context, model: str, timeout: float) -> None:
        _model_action(ctx, command, model, timeout)


_model_command("load", protocol.LoadModel)
_model_command("unload", protocol.UnloadModel)
_model_command("pin", protocol.PinModel)
_model_command("unpin", protocol.UnpinModel)


@cli.command(help=protocol.ProviderLogs.help())
@click.argument("provider")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(0, 10_000),
    default=50,
    show_default=True,
    help="how many recent lines",
)
@pass_ctx
def logs(ctx: Context, provider: str, follow: bool, lines: int) -> None:
    if not follow:
        doc = ctx.call(protocol.ProviderLogs, {"lines": str(lines)}, name=provider)
        human = "\n".join(_log_text(line) for line in doc["lines"])
        if ctx.as_json:
            ctx.emit(doc, "")
        elif human:
            echo(human)
        return
    query = {"lines": str(lines), "follow": "1"}
    response = ctx.stream(protocol.ProviderLogs, query, name=provider)
    try:
        for raw in response.iter_lines():
            if ctx.as_json:
                echo(raw.decode())
            else:
                echo(_log_text(json.loads(raw)))
        # A clean end: the provider was replaced by a reload, or helixd is stopping.
        echo(f"helixctl: the log stream of {provider} ended (reload or helixd stopping)", err=True)
    except KeyboardInterrupt:
        pass
    except (ProtocolError, OSError):
        fail("helixd closed the log stream (it stopped or restarted)", EXIT_FAILED)
    finally:
        response.close()


@cli.command(help=protocol.PullModel.help())
@click.argument("model")
@click.option("--provider", help="the Ollama provider to pull into (default: the only one)")
@pass_ctx
def pull(ctx: Context, model: str, provider: str | None) -> None:
    from helixctl.progress import PullProgress

    if provider is None:
        ollamas = [
            p["name"]
            for p in ctx.call(protocol.ListProviders)["providers"]
            if p.get("kind") == "ollama"
        ]
        if len(ollamas) != 1:
            found = ", ".join(ollamas) or "none configured"
            fail(f"name the Ollama provider with --provider (Ollama providers: {found})", 2)
        provider = ollamas[0]
    response = ctx.stream(protocol.PullModel, {"model": model}, name=provider)
    progress, tty = PullProgress(), sys.stdout.isatty()
    last, step = "", None
    try:
        for raw in response.iter_lines():
            try:
                update = json.loads(raw)
            except ValueError:
                update = None
            if not isinstance(update, dict):
                fail(
                    f"{provider}: pull {model}: unexpected progress line {raw[:80]!r}", EXIT_FAILED
                )
            if ctx.as_json:
                echo(raw.decode())
            if "error" in update:
                if tty and last:
                    echo("")
                fail(f"{provider}: pull {model}: {update['error']}", EXIT_FAILED)
            if ctx.as_json:
                continue
            text, new_step = progress.line(update), update.get("status")
            finished = update.get("total") and update.get("completed") == update.get("total")
            if tty:  # redraw the step's line; a new step starts a new one
                lead = "\r" if new_step == step else ("\n" if last else "")
                echo(lead + text.ljust(len(last) if new_step == step else 0), nl=False)
            elif new_step != step or finished:
                echo(text)  # a log, not a terminal: a line per step and per finished part
            last, step = text, new_step
    except (ProtocolError, OSError):
        fail(f"helixd closed the pull of {model} early (it stopped or restarted)", EXIT_FAILED)
    finally:
        response.close()
    if tty and last:
        echo("")
    if step != "success" and not ctx.as_json:
        fail(f"{provider}: the pull of {model} ended without success", EXIT_FAILED)


def _log_text(line: dict[str, Any]) -> str:
    import time

    stamp = time.strftime("%H:%M:%S", time.localtime(line["ts"]))
    tag = "" if line["stream"] == "stdout" else f"[{line['stream']}] "
    return f"{stamp} {tag}{line['text']}"


@cli.command(help=protocol.Reload.help())
@pass_ctx
def reload(ctx: Context) -> None:
    doc = ctx.call(protocol.Reload, timeout=300)
    changes = doc["changes"]
    parts = [
        f"{k.replace('_', ' ')} {', '.join(v)}"
        for k, v in changes.items()
        if v and k != "unchanged"
    ]
    human = "reloaded: " + ("; ".join(parts) if parts else "nothing changed")
    for warning in doc.get("warnings", []):
        human += f"\nwarning: {warning}"
    ctx.emit(doc, human)


@cli.command(help=protocol.Events.help())
@click.option("--once", is_flag=True, help="print one frame (with --json: the raw snapshot); exit")
@pass_ctx
def top(ctx: Context, once: bool) -> None:
    from helixctl.top import run  # curses and the renderer only for this command

    run(ctx, once)


@cli.group()
def config() -> None:
    """Work with config files."""


@config.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--system", "mode", flag_value="system", help="default to the system config")
@click.option("--user", "mode", flag_value="user", help="default to the user config")
@pass_ctx
def config_check(ctx: Context, file: str | None, mode: str | None) -> None:
    """Validate FILE with helixd's own validator.

    Without FILE: the config of the helixd that answers on the socket, else the one a new
    helixd would read (HELIXD_CONFIG, or the system/user default).
    """
    from pathlib import Path

    from helixd.config import ConfigError, default_config_path, describe, load_config
    from helixd.paths import parse_mode

    if file:
        path = Path(file)
    else:
        running = _running_config(ctx) if mode is None else None
        path = running or default_config_path(parse_mode(mode))
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        if ctx.as_json:
            echo(
                json.dumps(
                    {"ok": False, "file": str(path), "errors": str(exc).splitlines()}, indent=2
                )
            )
            sys.exit(EXIT_FAILED)
        fail(str(exc), EXIT_FAILED)
    ctx.emit(
        {
            "ok": True,
            "file": str(path),
            "providers": list(loaded.config.providers),
            "models": list(loaded.config.models),
        },
        f"{path}: OK ({describe(loaded.config)})",
    )


def _running_config(ctx: Context) -> Any:
    from pathlib import Path

    try:
        status, doc = ctx.client.call(protocol.Status.method, protocol.Status.target(), 5)
    except (Unreachable, ProtocolError):
        return None
    return Path(doc["config"]) if status == 200 and isinstance(doc, dict) else None


@cli.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    help="where to write (default: the config helixd would read)",
)
@click.option("--system", "mode", flag_value="system", help="write the system config")
@click.option("--user", "mode", flag_value="user", help="write the user config")
@click.option("--force", is_flag=True, help="overwrite an existing file")
@click.option(
    "--models-dir",
    "models_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="look for GGUF files here instead of the usual folders (repeatable)",
)
@pass_ctx
def init(
    ctx: Context, output: str | None, mode: str | None, force: bool, models_dirs: tuple[str, ...]
) -> None:
    """Write a config for the providers and models found on this host."""
    from pathlib import Path

    from helixctl.initcfg import write_initial_config

    dirs = [Path(d) for d in models_dirs] or None
    try:
        path, found, todo = write_initial_config(
            Path(output) if output else None, mode, force, dirs
        )
    except FileExistsError as exc:
        fail(f"{exc.args[0]} already exists; pass --force to overwrite it", EXIT_FAILED)
    except OSError as exc:
        fail(f"cannot write {exc.filename}: {exc.strerror}", EXIT_FAILED)
    human = [f"wrote {path}", "found:", *(f"  {line}" for line in found)]
    if todo:
        human += ["to do:", *(f"  {line}" for line in todo)]
    human.append(f"check it with: helixctl config check {path}")
    ctx.emit({"file": str(path), "found": found, "todo": todo}, "\n".join(human))


@cli.group()
def export() -> None:
    """Write configs for other tools from what helixd serves."""


@export.command("litellm")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="URL",
    help="another helixd's endpoint, e.g. http://gpu2:11400 (repeatable)",
)
@click.option(
    "--key-env",
    metavar="VAR",
    help="environment variable holding the endpoints' API key (the config refers to it)",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="write to FILE")
@click.option("--no-local", is_flag=True, help="leave out the helixd on this host's socket")
@click.option(
    "--prefer-loaded",
    is_flag=True,
    help="health checks pass only where the model is loaded, so LiteLLM prefers those hosts",
)
@pass_ctx
def export_litellm(
    ctx: Context,
    hosts: tuple[str, ...],
    key_env: str | None,
    output: str | None,
    no_local: bool,
    prefer_loaded: bool,
) -> None:
    """A LiteLLM proxy config with this helixd's models and those of each --host."""
    from helixctl.export import run_litellm

    run_litellm(ctx, hosts, key_env, output, not no_local, prefer_loaded)


# Every command is registered by now (this module's and those of helixctl.ops).
accept_json_everywhere(cli)


def main() -> None:
    """Entry point through click alone (``python -m helixctl.cli``)."""
    cli(prog_name="helixctl")


if __name__ == "__main__":
    main()
