"""helixctl's click-free fast path for ``status`` accepts exactly the simple command lines."""

from __future__ import annotations

import pytest

from helixctl.core import _fast_status_args


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status"], (None, False)),
        (["--json", "status"], (None, True)),
        (["--socket", "/s", "status"], ("/s", False)),
        (["--socket=/s", "--json", "status"], ("/s", True)),
        (["status", "--help"], None),
        (["status", "--json"], (None, True)),  # --json goes before or after the command
        (["--json", "status", "--json"], (None, True)),
        (["--help"], None),
        (["logs", "x"], None),
        (["--socket"], None),
        ([], None),
        (["status", "status"], None),
    ],
)
def test_fast_path_grammar(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: object
) -> None:
    monkeypatch.delenv("HELIXD_SOCKET", raising=False)
    assert _fast_status_args(argv) == expected


def test_environment_socket_is_used_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIXD_SOCKET", "/env.sock")
    assert _fast_status_args(["status"]) == ("/env.sock", False)
    assert _fast_status_args(["--socket", "/cli.sock", "status"]) == ("/cli.sock", False)


def test_every_command_takes_json_after_its_name() -> None:
    import click

    from helixctl.cli import cli

    def walk(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
        found: list[tuple[str, click.Command]] = []
        for name, command in group.commands.items():
            found.append((prefix + name, command))
            if isinstance(command, click.Group):
                found += walk(command, prefix + name + " ")
        return found

    commands = walk(cli, "")
    assert len(commands) > 15
    missing = [
        name
        for name, command in commands
        if not any("--json" in getattr(p, "opts", ()) for p in command.params)
    ]
    assert missing == []
