"""ARCHITECTURE.md's code map cannot go stale, in either direction.

Every name in backticks that looks like a file or folder of the repository must exist:

- a path whose first part is a top-level folder (``helixd/scheduler/core.py``,
  ``helixd/proxy/``, ``tests/unit/``, ``units/helixd.service``), optionally followed by
  ``::test_name``, which must then be a function defined in that file;
- a bare ``name.py`` under a heading that names a folder (``### `helixd/proxy/` ``): the
  module of that folder (a bare ``name.py`` anywhere else cannot be placed, and fails);
- a dotted module name (``helixd.scheduler.core``).

And every module of ``helixd`` and ``helixctl`` (but ``__init__.py`` and ``__main__.py``)
must be named, so a new module is not left off the map.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "ARCHITECTURE.md"
PACKAGES = ("helixd", "helixctl")
# Top-level folders of the repository; a backticked path starting with one is checked.
TOP_FOLDERS = frozenset({*PACKAGES, "tests", "bench", "units", "etc", "packaging", ".ci"})

_CODE = re.compile(r"`([^`\n]+)`")
_HEADING = re.compile(r"^#{1,6}\s")
_PATH = re.compile(r"^[\w.\-]+(?:/[\w.\-]+)*/?$")
_BARE_MODULE = re.compile(r"^\w+\.py$")
_DOTTED = re.compile(r"^(?:helixd|helixctl)(?:\.\w+)+$")


@dataclass(frozen=True)
class Named:
    """One name the map gives: the repository path it means, and the line it is on."""

    line: int
    text: str
    path: str | None  # None: a bare module name outside any folder's section
    test: str | None = None


def _section_folder(heading: str) -> str | None:
    """The folder a heading names in backticks (``### `helixd/proxy/` ``), if any."""
    spans: list[str] = _CODE.findall(heading)
    for span in spans:
        if span.endswith("/") and span.split("/")[0] in TOP_FOLDERS:
            return span
    return None


def _dotted_path(name: str) -> str:
    """``helixd.scheduler.core`` → the module file, or the package folder."""
    base = name.replace(".", "/")
    return f"{base}.py" if (ROOT / f"{base}.py").is_file() else f"{base}/"


def named(text: str) -> Iterator[Named]:
    """Every repository path the map's text names, in order."""
    folder: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if _HEADING.match(line):
            folder = _section_folder(line)
        for span in _CODE.findall(line):
            path, _, test = span.partition("::")
            if _BARE_MODULE.match(path):
                yield Named(number, span, None if folder is None else folder + path, test or None)
            elif _DOTTED.match(path):
                yield Named(number, span, _dotted_path(path))
            elif _PATH.match(path) and "/" in path and path.split("/")[0] in TOP_FOLDERS:
                yield Named(number, span, path, test or None)


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def problems(text: str, root: Path = ROOT) -> list[str]:
    """What the map names that is not so: missing files, folders and test functions."""
    found = []
    for name in named(text):
        where = f"ARCHITECTURE.md:{name.line}: `{name.text}`"
        if name.path is None:
            found.append(f"{where}: a bare module name outside a folder's section")
            continue
        target = root / name.path
        if name.path.endswith("/"):
            if not target.is_dir():
                found.append(f"{where}: no folder {name.path}")
        elif not target.is_file():
            found.append(f"{where}: no file {name.path}")
        elif name.test is not None and name.test not in _functions(target):
            found.append(f"{where}: {name.path} defines no {name.test}")
    return found


def modules(root: Path = ROOT) -> set[str]:
    """Every module file of the packages, as a repository path."""
    return {
        p.relative_to(root).as_posix()
        for package in PACKAGES
        for p in (root / package).rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and "__pycache__" not in p.parts
    }


def test_every_path_the_map_names_exists() -> None:
    found = problems(MAP.read_text())
    assert found == [], "ARCHITECTURE.md names what is not there:\n" + "\n".join(found)


def test_the_map_names_every_module() -> None:
    mentioned = {n.path for n in named(MAP.read_text())}
    missing = sorted(modules() - mentioned)
    assert missing == [], "ARCHITECTURE.md's code map leaves out:\n" + "\n".join(missing)


def test_the_checks_see_what_they_should() -> None:
    """The checks above would pass on a map that names nothing; these would not."""
    sample = "\n".join(
        [
            "Intro: `helixd/scheduler/core.py`, `helixd/proxy/`, `helixd.scheduler.core`,",
            "`tests/unit/test_import_cycles.py::test_no_module_imports_itself_back`.",
            "Not paths: `/run/helixd/helixd.sock`, `helixctl status`, `[proxy] listen`.",
            "A bare `nowhere.py` here cannot be placed.",
            "### `helixd/proxy/`",
            "`relay.py` and `no_such_module.py`; `helixd/no_such_folder/`;",
            "`tests/unit/test_import_cycles.py::test_no_such_test`; `helixd.no_such`.",
            "## Elsewhere",
            "`routing.py` outside a folder's section.",
        ]
    )
    paths = [n.path for n in named(sample)]
    assert paths[:5] == [
        "helixd/scheduler/core.py",
        "helixd/proxy/",
        "helixd/scheduler/core.py",
        "tests/unit/test_import_cycles.py",
        None,
    ]
    assert "helixd/proxy/relay.py" in paths
    found = problems(sample)
    assert [p.split(": ", 1)[1] for p in found] == [
        "`nowhere.py`: a bare module name outside a folder's section",
        "`no_such_module.py`: no file helixd/proxy/no_such_module.py",
        "`helixd/no_such_folder/`: no folder helixd/no_such_folder/",
        "`tests/unit/test_import_cycles.py::test_no_such_test`: "
        "tests/unit/test_import_cycles.py defines no test_no_such_test",
        "`helixd.no_such`: no folder helixd/no_such/",
        "`routing.py`: a bare module name outside a folder's section",
    ]
    assert "helixd/scheduler/core.py" in modules()
    assert not any(m.endswith(("__init__.py", "__main__.py")) for m in modules())
