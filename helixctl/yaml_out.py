"""YAML for helixctl's generated configs: a tiny emitter for plain data, with comments.

PyYAML is not among helixd's runtime dependencies, and the configs helixctl writes
have a fixed, simple shape: mappings, lists and scalars. Every string is written in
JSON's double quotes, which YAML reads the same way; what YAML would not accept raw,
or would read as a line break, is escaped; keys YAML 1.1 would read as something other
than a string are quoted. A :class:`Note` puts comment lines before a value (JSON
output drops them: :func:`plain`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Note:
    """A value with YAML comment lines written before it (dropped in JSON)."""

    value: Any
    comments: list[str] = field(default_factory=list)


def plain(node: Any) -> Any:
    """The config without comments (for JSON)."""
    if isinstance(node, Note):
        return plain(node.value)
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Characters YAML does not allow raw, or reads as line breaks, in a scalar or a comment.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def scalar(value: Any) -> str:
    """A YAML scalar: strings in JSON's double quotes (valid YAML), numbers, booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = json.dumps(str(value), ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# Plain scalars YAML 1.1 reads as something else than a string.
_SPECIAL = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def _key(key: Any) -> str:
    text = str(key)
    plain = _PLAIN_KEY.match(text) and text.lower() not in _SPECIAL
    return text if plain else scalar(text)


def _comment_lines(comments: list[str], indent: str) -> list[str]:
    """``# text`` lines; what would end a comment or is not printable is written escaped."""
    lines = []
    for comment in comments:
        text = _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", comment.replace("\n", " "))
        lines.append(f"{indent}# {text}".rstrip())
    return lines


def to_yaml(node: Any, comments: Iterable[str] = ()) -> str:
    """YAML for the fixed shape of a config: mappings, lists and scalars, with comments."""
    lines = _comment_lines(list(comments), "")
    lines += _block(node, 0)
    return "\n".join(lines) + "\n"


def _block(node: Any, level: int) -> list[str]:
    """The lines of a mapping or list at ``level`` (two spaces each)."""
    indent = "  " * level
    lines: list[str] = []
    if isinstance(node, dict):
        for key, raw in node.items():
            value, notes = (raw.value, raw.comments) if isinstance(raw, Note) else (raw, [])
            lines += _comment_lines(notes, indent)
            if _nested(value):
                lines.append(f"{indent}{_key(key)}:")
                lines += _block(value, level + 1)
            else:
                lines.append(f"{indent}{_key(key)}: {_inline(value)}")
    else:
        for raw in node:
            value, notes = (raw.value, raw.comments) if isinstance(raw, Note) else (raw, [])
            lines += _comment_lines(notes, indent)
            if _nested(value):
                inner = _block(value, level + 1)
                lines.append(f"{indent}- {inner[0].lstrip()}")
                lines += inner[1:]
            else:
                lines.append(f"{indent}- {_inline(value)}")
    return lines


def _nested(value: Any) -> bool:
    """Written as a block below its key: a non-empty mapping, or a list of more than scalars."""
    if isinstance(value, list):
        return any(isinstance(v, dict | list | Note) for v in value)
    return isinstance(value, dict) and bool(value)


def _inline(value: Any) -> str:
    """``{}``, or a list of scalars in flow style (``["a", "b"]``), or a scalar."""
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    return scalar(value)
