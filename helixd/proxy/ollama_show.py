"""What Ollama clients learn of a model: ``/api/show``, and the ``details`` of the listings.

Built from what helixd knows without loading anything: the model's config (its file, its
context length) and, for a GGUF file, the file's own header, read with the bounded reader
of :mod:`helixd.providers.estimate`. Headers are read in a thread and kept per file
version (path, mtime, size), so a listing that many front-ends poll costs one read per
file. What is not known stays empty rather than guessed. Models of an Ollama provider
are answered by that Ollama itself (see :mod:`helixd.proxy.ollama_front`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helixd.config import ModelConfig
from helixd.providers.estimate import EstimateError, read_gguf_summary
from helixd.proxy.ollama import rfc3339

log = logging.getLogger("helixd.proxy")

# Ollama's names for llama.cpp's file types (``general.file_type``, gguf-py's
# ``LlamaFileType``); tests/unit/test_ollama_show.py checks them against gguf-py.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4", 39: "NVFP4", 40: "Q1_0",
}  # fmt: skip

# Ollama leaves arrays longer than this out of a show that is not verbose (vocabularies).
SHORT_ARRAY = 5
# Metadata strings are names and chat templates (kilobytes); longer ones are not kept.
LONG_STRING = 1024 * 1024
# Ollama's column for the names in ``parameters``.
PARAMETER_WIDTH = 30
# Header reads kept (one per file version); a few dozen models is a big host.
CACHED_FILES = 64


@dataclass(frozen=True)
class ModelFile:
    """What a model's file (or folder) says of it: when it changed, and its GGUF header
    (empty for anything that is not a GGUF file helixd can read)."""

    modified: float
    meta: Mapping[str, object] = field(default_factory=dict)
    parameters: int = 0

    @property
    def architecture(self) -> str:
        """``general.architecture``, or "" when unknown."""
        arch = self.meta.get("general.architecture")
        return arch if isinstance(arch, str) else ""


class ModelFiles:
    """Model files' headers, read once per file version and kept for the latest few."""

    def __init__(self, limit: int = CACHED_FILES) -> None:
        self._limit = limit
        self._kept: OrderedDict[tuple[str, int, int], ModelFile] = OrderedDict()
        self._lock = threading.Lock()  # reads run in worker threads

    async def read_all(self, paths: Iterable[Path]) -> dict[Path, ModelFile]:
        """The files that could be read, by path; one worker thread for them all."""
        wanted = list(dict.fromkeys(paths))
        if not wanted:
            return {}
        return await asyncio.to_thread(self._read_all, wanted)

    def _read_all(self, paths: list[Path]) -> dict[Path, ModelFile]:
        found = {path: self.read(path) for path in paths}
        return {path: facts for path, facts in found.items() if facts is not None}

    def read(self, path: Path) -> ModelFile | None:
        """Blocking: the file's facts, from the cache while it has not changed."""
        try:
            stat = path.stat()
        except OSError:
            return None  # gone or unreadable: the model's own load will say why
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
                return kept
        facts = _read_model_file(path, stat)
        with self._lock:
            self._kept[key] = facts
            while len(self._kept) > self._limit:
                self._kept.popitem(last=False)
        return facts


def _read_model_file(path: Path, stat: os.stat_result) -> ModelFile:
    if not path.is_file() or not _is_gguf(path):
        return ModelFile(stat.st_mtime)  # a folder (Hugging Face) or another format
    try:
        summary = read_gguf_summary(path)
    except EstimateError as exc:
        # Said once per file version (the failure is cached); the model may still serve.
        log.warning("Ollama listings: no details for a model: %s", exc)
        return ModelFile(stat.st_mtime)
    return ModelFile(stat.st_mtime, _compact(summary.meta), summary.parameters)


def _compact(meta: Mapping[str, object]) -> dict[str, object]:
    """What is worth keeping: scalars, short arrays; long arrays (a vocabulary, its
    scores, per-token types) become empty ones, as Ollama shows them."""
    kept: dict[str, object] = {}
    for key, value in meta.items():
        if isinstance(value, str):
            kept[key] = value if len(value) <= LONG_STRING else ""
        elif isinstance(value, bool | int | float):
            kept[key] = value
        else:
            short = isinstance(value, list) and len(value) <= SHORT_ARRAY
            kept[key] = value if short else []
    return kept


def _is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"  # Ollama's blobs have no suffix
    except OSError:
        return False


# --- the documents (pure) -------------------------------------------------------------------


def human_number(n: int) -> str:
    """A parameter count as Ollama writes it (``format.HumanNumber``): 7.6B, 494.03M."""
    for size, unit, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value.is_integer() else f"{value:.{decimals}f}{unit}"
    return f"{n / 1000:.0f}K" if n >= 1000 else str(n)


def model_details(facts: ModelFile | None) -> dict[str, Any]:
    """Ollama's ``details``; empty strings where the model's file does not say."""
    meta = facts.meta if facts is not None else {}
    arch = facts.architecture if facts is not None else ""
    file_type = meta.get("general.file_type")
    parameters = facts.parameters if facts is not None else 0
    return {
        "parent_model": "",
        "format": "gguf" if meta else "",
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": human_number(parameters) if parameters else "",
        "quantization_level": FILE_TYPES.get(file_type, "") if isinstance(file_type, int) else "",
    }


def model_info(facts: ModelFile | None) -> dict[str, Any]:
    """Ollama's ``model_info``: the GGUF metadata (``<arch>.context_length`` among it),
    long arrays left empty and the chat template left to ``template``, as Ollama does."""
    if facts is None or not facts.meta:
        return {}
    info: dict[str, Any] = {
        key: value
        for key, value in _compact(facts.meta).items()
        if not key.startswith("tokenizer.chat_template")
    }
    if facts.parameters:
        info.setdefault("general.parameter_count", facts.parameters)
    return dict(sorted(info.items()))


def capabilities(facts: ModelFile | None) -> list[str]:
    """``embedding`` for a GGUF with a pooling type, ``completion`` for another GGUF (as
    Ollama decides); nothing when the file does not say."""
    if facts is None or not facts.architecture:
        return []
    if f"{facts.architecture}.pooling_type" in facts.meta:
        return ["embedding"]
    return ["completion"]


def parameters_text(config: ModelConfig) -> str:
    """Ollama's ``parameters``: one ``name value`` line per setting helixd serves with."""
    settings = [("num_ctx", str(config.ctx))] if config.ctx else []
    return "\n".join(f"{name:<{PARAMETER_WIDTH}} {value}" for name, value in settings)


def show_document(
    model: str, config: ModelConfig, facts: ModelFile | None, now: float
) -> dict[str, Any]:
    """``/api/show`` for ``model`` from its config and its file's facts (None: unknown);
    ``now`` stands in for the file's mtime when there is no file."""
    template = facts.meta.get("tokenizer.chat_template") if facts is not None else None
    source = str(config.path) if config.path is not None else (config.id or model)
    modelfile = f"# {model}, as helixd serves it (provider {config.provider})\nFROM {source}\n"
    if config.ctx:
        modelfile += f"PARAMETER num_ctx {config.ctx}\n"
    return {
        "modelfile": modelfile,
        "parameters": parameters_text(config),
        "template": template if isinstance(template, str) else "",
        "details": model_details(facts),
        "model_info": model_info(facts),
        "capabilities": capabilities(facts),
        "modified_at": rfc3339(facts.modified if facts is not None else now),
    }
