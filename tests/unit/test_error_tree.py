"""One exception tree (helixd.errors) and one status table per edge, kept honest.

Every exception class in helixd hangs from ``HelixError`` with a code of its own; the
tree drawn in ``helixd.errors``'s docstring is the real one; each edge's table covers the
codes its handlers send, with the statuses they send, and the tables agree but where a
difference is documented.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import helixd
from helixd import errors
from helixd.control.errors import CONTROL_STATUS
from helixd.control.errors import PASSED_THROUGH as CONTROL_PASSED_THROUGH
from helixd.errors import RESIDENCY_REFUSALS, HelixError, ResidencyError
from helixd.proxy.errors import DIALECT_DIFFERENCES, OPENAI_STATUS
from helixd.proxy.errors import PASSED_THROUGH as ENDPOINT_PASSED_THROUGH
from helixd.proxy.ollama import OLLAMA_STATUS, BadOllamaRequest

PACKAGE = Path(helixd.__file__).parent
TABLES: dict[str, Mapping[str, int]] = {
    "control": CONTROL_STATUS,
    "openai": OPENAI_STATUS,
    "ollama": OLLAMA_STATUS,
}


def _modules() -> Iterator[str]:
    yield "helixd"
    for info in pkgutil.walk_packages(helixd.__path__, "helixd."):
        if not info.name.endswith("__main__"):  # runs the daemon when imported
            yield info.name


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


CLASSES = _exception_classes()


def test_the_walk_finds_the_classes_of_every_branch() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"ConfigError", "SpawnError", "LoadError", "QueueFull", "BackupError"} <= names
    assert {"SocketInUse", "BadOllamaRequest", "UnknownJob", "GpuReadError"} <= names
    assert len(CLASSES) >= 40


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_exception_in_helixd_derives_from_the_root_with_a_code_of_its_own(
    cls: type[BaseException],
) -> None:
    assert issubclass(cls, HelixError)
    code = vars(cls).get("code")  # its own, not its parent's
    assert isinstance(code, str) and re.fullmatch(r"[a-z][a-z_]*", code), code


def test_codes_are_distinct() -> None:
    codes = [vars(c)["code"] for c in CLASSES]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)


def test_classes_that_are_also_builtins_keep_that_base() -> None:
    # Callers catch these as the built-in (the daemon reads a ValueError's args, …).
    from helixd.control.sockets import SocketInUse
    from helixd.jobs.runner import UnknownJob
    from helixd.resources.gpu import GpuReadError, GpuSelectionError
    from helixd.supervisor.arbiter import UnknownProcess

    assert issubclass(SocketInUse, ValueError) and issubclass(GpuSelectionError, ValueError)
    assert issubclass(BadOllamaRequest, ValueError) and issubclass(GpuReadError, RuntimeError)
    assert issubclass(UnknownJob, KeyError) and issubclass(UnknownProcess, KeyError)


def _drawn_tree() -> dict[str, tuple[str, str | None]]:
    """Each class the docstring draws: its code and the class drawn above it."""
    assert errors.__doc__ is not None
    drawn: dict[str, tuple[str, str | None]] = {}
    parents: list[str] = []
    for line in errors.__doc__.splitlines():
        match = re.fullmatch(r"( *)\* (\w+)  (\w+)  \S.*", line)
        if match is None:
            continue
        indent, name, code = match.groups()
        depth = (len(indent) - 4) // 2
        del parents[depth:]
        assert name not in drawn, f"{name} is drawn twice"
        drawn[name] = (code, parents[-1] if parents else None)
        parents.append(name)
    return drawn


def test_the_docstring_draws_every_class_with_its_code_under_its_parent() -> None:
    drawn = _drawn_tree()
    by_name = {c.__name__: c for c in CLASSES}
    assert len(by_name) == len(CLASSES), "two exception classes share a name"
    assert set(drawn) == set(by_name)
    for name, (code, parent) in drawn.items():
        cls = by_name[name]
        assert vars(cls)["code"] == code, name
        helix_bases = [b.__name__ for b in cls.__bases__ if issubclass(b, HelixError)]
        assert helix_bases == ([] if parent is None else [parent]), name


def test_the_errors_module_imports_nothing_heavy() -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse((PACKAGE / "errors.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert imported <= {"__future__", "typing"}, imported


# -- the edges' tables ---------------------------------------------------------------------


@pytest.mark.parametrize("edge", TABLES)
def test_each_table_gives_an_error_status_to_every_residency_refusal(edge: str) -> None:
    table = TABLES[edge]
    for refusal in RESIDENCY_REFUSALS:
        assert 400 <= table[refusal.code] < 600, (edge, refusal.code)
    assert all(400 <= status < 600 for status in table.values())


def test_the_residency_refusals_are_every_subclass() -> None:
    assert set(RESIDENCY_REFUSALS) == set(ResidencyError.__subclasses__())


def test_helixds_own_api_answers_what_the_classes_say() -> None:
    for refusal in (ResidencyError, *RESIDENCY_REFUSALS):
        assert CONTROL_STATUS[refusal.code] == refusal.status


def test_the_tables_agree_where_they_overlap_but_where_a_difference_is_documented() -> None:
    differing = set()
    for first, second in (("control", "openai"), ("control", "ollama"), ("openai", "ollama")):
        a, b = TABLES[first], TABLES[second]
        for code in a.keys() & b.keys():
            if a[code] != b[code]:
                differing.add(code)
                assert code in DIALECT_DIFFERENCES, (first, second, code, a[code], b[code])
    assert differing == set(DIALECT_DIFFERENCES), "a documented difference that is none"


def test_the_two_dialects_answer_alike() -> None:
    # The same requests reach both; Ollama's only adds what is not Ollama.
    assert {k: v for k, v in OLLAMA_STATUS.items() if k in OPENAI_STATUS} == OPENAI_STATUS
    assert set(OLLAMA_STATUS) - set(OPENAI_STATUS) == {BadOllamaRequest.code}


def test_a_full_queue_is_a_rate_limit_to_openai_clients() -> None:
    assert OPENAI_STATUS["queue_full"] == OLLAMA_STATUS["queue_full"] == 429


def _calls(folder: str, names: set[str]) -> Iterator[tuple[str, ast.Call]]:
    for path in sorted((PACKAGE / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in names
            ):
                yield f"{path.name}:{node.lineno}", node


def _literal(node: ast.expr) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def _check_sites(
    sites: list[tuple[str, object, object]], table: Mapping[str, int], passed: frozenset[str]
) -> int:
    checked = 0
    for where, status, code in sites:
        if not isinstance(code, str):
            continue  # a code from an exception: the table is read there
        if isinstance(status, int):
            assert table.get(code) == status, f"{where}: {code} sent with {status}"
        else:
            assert code in table or code in passed, f"{where}: {code} is in no table"
        checked += 1
    return checked


def test_every_code_the_control_api_sends_has_the_tables_status() -> None:
    sites = [
        (where, _literal(call.args[0]), _literal(call.args[1]))
        for where, call in _calls("control", {"error"})
    ]
    assert _check_sites(sites, CONTROL_STATUS, CONTROL_PASSED_THROUGH) >= 20


def test_every_code_the_endpoint_sends_has_the_tables_status() -> None:
    sites = [
        (where, _literal(call.args[0]), _literal(call.args[2]))
        for where, call in _calls("proxy", {"openai_error", "error", "_as_ollama_error"})
        if len(call.args) >= 3
    ]
    # The edge's own refusals: ``_refuse(request, status, message, code, started)``.
    for path in sorted((PACKAGE / "proxy").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "_refuse"
            ):
                where = f"{path.name}:{node.lineno}"
                sites.append((where, _literal(node.args[1]), _literal(node.args[3])))
    # server.py's ``error`` is either dialect's, depending on the request: both must agree.
    assert _check_sites(sites, OPENAI_STATUS, ENDPOINT_PASSED_THROUGH) >= 8
    assert _check_sites(sites, OLLAMA_STATUS, ENDPOINT_PASSED_THROUGH) >= 8


def test_every_refusal_the_endpoint_raises_has_a_status_in_both_dialects() -> None:
    codes = [(where, _literal(call.args[1])) for where, call in _calls("proxy", {"Refused"})]
    assert len(codes) >= 5
    for where, code in codes:
        assert isinstance(code, str), where
        assert code in OPENAI_STATUS and code in OLLAMA_STATUS, f"{where}: {code}"


def test_the_exceptions_the_control_api_answers_for_use_the_code_it_sends() -> None:
    from helixd.jobs.archive import BackupError
    from helixd.jobs.backup import UnknownBackup
    from helixd.jobs.backup_ops import RestoreFailed
    from helixd.jobs.runner import UnknownJob
    from helixd.supervisor.arbiter import UnknownProcess
    from helixd.supervisor.process import ProcessClosed

    caught = (UnknownProcess, ProcessClosed, errors.ReloadRefused, UnknownJob, BackupError)
    for cls in (*caught, UnknownBackup, RestoreFailed, HelixError):
        assert cls.code in CONTROL_STATUS, cls.__name__


def test_a_refusal_is_found_by_its_code() -> None:
    for cls in RESIDENCY_REFUSALS:
        made = errors.refusal(cls.code, "why")
        assert type(made) is cls and str(made) == "why"
