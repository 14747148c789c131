"""The control protocol is defined once: the server routes it, helixctl speaks and documents it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, cast

import click
import pytest

from helixd import protocol
from helixd.protocol import COMMANDS


def _server_routes() -> dict[tuple[str, str], str]:
    """(method, path) → the name of its handler, for the whole control API app."""
    from helixd.control.api import ControlAPI
    from helixd.control.jobs_api import add_jobs_routes
    from helixd.control.models_api import add_model_routes

    backend = cast(Any, object())
    api = ControlAPI(backend)
    app = api.app()
    add_model_routes(api, app, backend)
    add_jobs_routes(api, app, backend)
    routes = {}
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        routes[(route.method, canonical)] = getattr(route.handler, "__name__", "")
    return routes


def test_the_server_routes_every_command_to_the_handler_of_its_name() -> None:
    routes = _server_routes()
    for command in COMMANDS:
        assert routes.get((command.method, command.path)) == command.name, command.__name__
        if command.method == "GET":
            assert ("HEAD", command.path) in routes  # as aiohttp's add_get always did


def test_the_server_serves_nothing_else_but_the_unknown_action_answers() -> None:
    declared = {(c.method, c.path) for c in COMMANDS}
    extra = {k for k in _server_routes() if k not in declared and k[0] != "HEAD"}
    assert extra == {
        ("POST", "/v1/providers/{name}/{action}"),
        ("POST", "/v1/models/{name}/{action}"),
    }


def test_every_command_is_listed_once_with_a_unique_route_and_name() -> None:
    assert len({c.name for c in COMMANDS}) == len(COMMANDS)
    assert len({(c.method, c.path) for c in COMMANDS}) == len(COMMANDS)
    defined = {c for c in vars(protocol).values() if isinstance(c, type)}
    assert {c for c in defined if issubclass(c, protocol.Command)} - {protocol.Command} == set(
        COMMANDS
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.__name__)
def test_every_docstring_is_help_then_wire(command: type[protocol.Command]) -> None:
    help_text, wire = command.help(), command.wire_doc()
    assert help_text and "Wire:" not in help_text
    assert wire.startswith(f"{command.method} {command.path}")
    assert "\n\nWire: " in wire
    for name in command.query:
        assert f"``{name}" in wire, f"{command.__name__}: the query's {name} is undocumented"


def test_targets_quote_names_and_keep_the_query_order() -> None:
    assert protocol.Status.target() == "/v1/status"
    assert (
        protocol.StartProvider.target({"wait": "1", "timeout": "120"}, name="a b/c")
        == "/v1/providers/a%20b%2Fc/start?wait=1&timeout=120"
    )
    assert (
        protocol.PullModel.target({"model": "qwen2.5:7b"}, name="ollama")
        == "/v1/providers/ollama/pull?model=qwen2.5%3A7b"
    )
    assert protocol.RestoreBackup.target(id="b?1") == "/v1/backups/b%3F1/restore"


def test_targets_refuse_what_the_command_does_not_take() -> None:
    with pytest.raises(TypeError):
        protocol.GetModel.target()
    with pytest.raises(TypeError):
        protocol.Status.target(name="x")
    with pytest.raises(TypeError):
        protocol.ListAlerts.target({"follow": "1"})


# helixctl's commands and the protocol command whose docstring is their help.
CLI_HELP = {
    "status": protocol.Status,
    "start": protocol.StartProvider,
    "stop": protocol.StopProvider,
    "restart": protocol.RestartProvider,
    "logs": protocol.ProviderLogs,
    "pull": protocol.PullModel,
    "reload": protocol.Reload,
    "models": protocol.ListModels,
    "load": protocol.LoadModel,
    "unload": protocol.UnloadModel,
    "pin": protocol.PinModel,
    "unpin": protocol.UnpinModel,
    "jobs": protocol.ListJobs,
    "run": protocol.RunJob,
    "backup list": protocol.ListBackups,
    "backup create": protocol.CreateBackup,
    "backup restore": protocol.RestoreBackup,
    "alerts": protocol.ListAlerts,
    "top": protocol.Events,
}


@pytest.mark.parametrize(("words", "command"), CLI_HELP.items(), ids=list(CLI_HELP))
def test_helixctl_help_is_the_commands_docstring(
    words: str, command: type[protocol.Command]
) -> None:
    from helixctl.cli import cli

    found: click.Command = cli
    for word in words.split():
        assert isinstance(found, click.Group)
        found = found.commands[word]
    assert found.help == command.help()


def test_helixctl_status_imports_no_server_module() -> None:
    """The fast path loads the protocol and nothing else of helixd: no aiohttp, no pydantic,
    not even typing or inspect (milliseconds of a start-up that should take about 40)."""
    code = (
        "import sys, helixctl.core, helixctl.render\n"
        "heavy = ('aiohttp', 'pydantic', 'click', 'helixd', 'typing', 'inspect', 'urllib')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['helixd', 'helixd.protocol']"
