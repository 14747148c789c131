"""Ollama's ``/api/show`` document, built from a model's config and a real GGUF header."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import pytest

from helixd.config import ModelConfig
from helixd.proxy.ollama import rfc3339
from helixd.proxy.ollama_show import (
    FILE_TYPES,
    ModelFile,
    ModelFiles,
    capabilities,
    human_number,
    model_details,
    show_document,
)
from tests.fakes.tiny_gguf import CHAT_TEMPLATE, N_LAYER, write_tiny_llama


def parameters_of(path: Path) -> int:
    """The weights of a GGUF file, counted by gguf-py's own reader."""
    return sum(int(t.n_elements) for t in gguf.GGUFReader(path).tensors)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_llama(tmp_path / "tiny.gguf", n_ctx_train=512)


def test_a_gguf_model_is_shown_from_its_header_and_its_config(tiny: Path) -> None:
    facts = ModelFiles().read(tiny)
    assert facts is not None and facts.parameters == parameters_of(tiny) > 0
    config = ModelConfig(provider="llama", path=tiny, ctx=256)
    document = show_document("tiny", config, facts, now=0.0)
    assert document["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": human_number(parameters_of(tiny)),
        "quantization_level": "F32",
    }
    info = document["model_info"]
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == 512 and info["llama.block_count"] == N_LAYER
    assert info["general.parameter_count"] == parameters_of(tiny)
    # Vocabularies are left empty and the template goes to its own field, as in Ollama.
    assert info["tokenizer.ggml.tokens"] == [] and info["tokenizer.ggml.scores"] == []
    assert not any(key.startswith("tokenizer.chat_template") for key in info)
    assert list(info) == sorted(info)
    assert document["template"] == CHAT_TEMPLATE
    assert document["parameters"] == "num_ctx" + " " * 24 + "256"
    assert document["capabilities"] == ["completion"]
    assert document["modelfile"].splitlines()[1:] == [f"FROM {tiny}", "PARAMETER num_ctx 256"]
    assert document["modified_at"] == rfc3339(os.stat(tiny).st_mtime)


def test_a_model_without_a_readable_file_is_shown_with_what_the_config_says() -> None:
    config = ModelConfig(provider="vllm", id="Qwen/Qwen2.5-7B-Instruct")
    document = show_document("qwen", config, None, now=86400.0)
    assert document["details"] == {
        "parent_model": "",
        "format": "",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }
    assert (document["model_info"], document["capabilities"], document["template"]) == ({}, [], "")
    assert document["parameters"] == ""  # no ctx declared: nothing made up
    assert document["modified_at"] == "1970-01-02T00:00:00Z"
    assert "FROM Qwen/Qwen2.5-7B-Instruct" in document["modelfile"]


def test_an_embedding_model_is_known_by_its_pooling_type() -> None:
    bert = ModelFile(0.0, {"general.architecture": "bert", "bert.pooling_type": 1})
    assert capabilities(bert) == ["embedding"]
    assert capabilities(ModelFile(0.0, {"general.architecture": "qwen2"})) == ["completion"]
    assert capabilities(ModelFile(0.0)) == []
    assert model_details(ModelFile(0.0, {"general.file_type": 15}))["quantization_level"] == (
        "Q4_K_M"
    )


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (7_615_616_512, "7.6B"),
        (8_000_000_000, "8B"),
        (494_032_768, "494.03M"),
        (135_000_000, "135M"),
        (22_700, "23K"),
        (999, "999"),
    ],
)
def test_parameter_counts_read_as_in_ollama(count: int, text: str) -> None:
    assert human_number(count) == text


def test_file_type_names_follow_gguf_py() -> None:
    # Ollama's own names; gguf-py says ALL_/MOSTLY_ and calls 38 MXFP4_MOE.
    theirs = {t.value: t.name.split("_", 1)[1] for t in gguf.LlamaFileType if t.value < 1024}
    theirs[38] = "MXFP4"
    assert theirs == FILE_TYPES


def test_headers_are_read_once_per_file_version(tiny: Path, tmp_path: Path) -> None:
    files = ModelFiles(limit=2)
    first = files.read(tiny)
    assert first is not None and files.read(tiny) is first
    write_tiny_llama(tiny, n_ctx_train=1024)  # replaced: another size or mtime
    os.utime(tiny, ns=(1, 1))
    second = files.read(tiny)
    assert second is not None and second is not first
    assert second.meta["llama.context_length"] == 1024
    # Not a GGUF, a broken one, a folder, a missing file: facts without a header, or None.
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00")
    for path in (text, broken, tmp_path):
        facts = files.read(path)
        assert facts is not None and facts.meta == {} and facts.parameters == 0
    assert files.read(tmp_path / "missing.gguf") is None


async def test_reads_run_in_a_thread_and_skip_what_cannot_be_read(tiny: Path) -> None:
    found = await ModelFiles().read_all([tiny, tiny, tiny.with_name("gone.gguf")])
    assert list(found) == [tiny] and found[tiny].architecture == "llama"
