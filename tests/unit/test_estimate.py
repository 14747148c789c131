"""Memory estimates from model headers: exact weights, the KV formula, hostile files.

Realistic GGUF files are written with gguf-py's ``GGUFWriter`` (the format's reference
writer); hostile ones are packed byte by byte, so that each test breaks exactly one thing.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helixd.providers import estimate
from helixd.providers.estimate import (
    GGML_TYPE_SIZES,
    MIB,
    EstimateError,
    MemoryEstimate,
    estimate_gguf,
    estimate_hf_folder,
    estimate_path,
)

OVERHEAD_256_MIB = 256 * MIB


# --- raw GGUF packing -----------------------------------------------------------------------


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def kv_str(key: str, value: str) -> bytes:
    return _str(key) + struct.pack("<I", 8) + _str(value)


def kv_u32(key: str, value: int) -> bytes:
    return _str(key) + struct.pack("<II", 4, value)


def tensor_info(name: str, dims: Sequence[int], type_id: int = 0, offset: int = 0) -> bytes:
    packed_dims = struct.pack(f"<{len(dims)}Q", *dims)
    return (
        _str(name)
        + struct.pack("<I", len(dims))
        + packed_dims
        + struct.pack("<IQ", type_id, offset)
    )


def raw_gguf(
    kvs: Sequence[bytes] = (),
    tensors: Sequence[bytes] = (),
    *,
    data: bytes = b"",
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
) -> bytes:
    """A GGUF file from packed parts; counts default to the parts given."""
    n_tensors = len(tensors) if n_tensors is None else n_tensors
    n_kv = len(kvs) if n_kv is None else n_kv
    header = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs)
    header += b"".join(tensors)
    return header + b"\0" * (-len(header) % 32) + data


def valid_raw() -> bytes:
    """One F32 tensor of 32 elements: 128 bytes of data after a 32-aligned header."""
    kvs = [kv_str("general.architecture", "llama"), kv_u32("llama.block_count", 1)]
    return raw_gguf(kvs, [tensor_info("t", [32])], data=b"\0" * 128)


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- GGUFWriter files -----------------------------------------------------------------------


def llama_meta(writer: Any, *, layers: int = 2, ctx: int = 1024, kv_heads: Any = 2) -> None:
    writer.add_block_count(layers)
    writer.add_context_length(ctx)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(kv_heads)


def write_model(path: Path, meta: Any = llama_meta, **writer_args: Any) -> tuple[Path, int]:
    """A llama GGUF with F32, F16 and Q8_0 tensors; returns the path and weight bytes."""
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(7)
    writer = gguf.GGUFWriter(path, "llama", **writer_args)
    meta(writer)
    f32 = rng.standard_normal((3, 64)).astype(np.float32)
    f16 = rng.standard_normal((5, 64)).astype(np.float16)
    q8 = gguf.quants.quantize(
        rng.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    writer.add_tensor("a.weight", f32)
    writer.add_tensor("b.weight", f16)
    writer.add_tensor("c.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("d.weight", np.ones(7, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, 3 * 64 * 4 + 5 * 64 * 2 + 4 * 64 // 32 * 34 + 7 * 4


def test_type_table_is_gguf_py_table() -> None:
    gguf = pytest.importorskip("gguf")
    theirs = {int(t): (t.name, *size) for t, size in gguf.GGML_QUANT_SIZES.items()}
    assert theirs == GGML_TYPE_SIZES


def test_weights_are_exact_and_fill_the_data_section(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path, expected = write_model(tmp_path / "m.gguf")
    est = estimate_gguf(path)
    assert est.weights_bytes == expected
    # Cross-check against the file itself: the data section is the weights plus padding.
    reader = gguf.GGUFReader(path)
    padding = path.stat().st_size - reader.data_offset - est.weights_bytes
    assert 0 <= padding < reader.alignment * len(reader.tensors)


def test_kv_cache_follows_the_formula(tmp_path: Path) -> None:
    path, weights = write_model(tmp_path / "m.gguf")
    est = estimate_gguf(path)
    # ctx 1024 * 2 layers * 2 KV heads * (16 + 16) head dims * 2 bytes (f16)
    assert est.kv_cache_bytes == 1024 * 2 * 2 * (16 + 16) * 2 == 256 * 1024
    assert est.overhead_bytes == int(weights * 0.05) + OVERHEAD_256_MIB
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.overhead_bytes
    assert est.detail.startswith("GGUF llama: ")
    assert "256.0 KiB KV (ctx 1024, 2 layers, 2 KV heads)" in est.detail


def test_ctx_argument_overrides_the_trained_context(tmp_path: Path) -> None:
    path, _ = write_model(tmp_path / "m.gguf")
    assert estimate_gguf(path, ctx=4096).kv_cache_bytes == 4 * estimate_gguf(path).kv_cache_bytes
    assert "ctx 4096" in estimate_gguf(path, ctx=4096).detail


def test_ctx_zero_means_the_trained_context(tmp_path: Path) -> None:
    path, _ = write_model(tmp_path / "m.gguf")
    assert estimate_gguf(path, ctx=0) == estimate_gguf(path)
    with pytest.raises(ValueError, match="negative"):
        estimate_gguf(path, ctx=-1)


def test_per_layer_kv_heads_are_summed(tmp_path: Path) -> None:
    def meta(writer: Any) -> None:
        llama_meta(writer, layers=3, kv_heads=[2, 0, 4])

    path, _ = write_model(tmp_path / "m.gguf", meta)
    est = estimate_gguf(path, ctx=100)
    assert est.kv_cache_bytes == 100 * (2 + 0 + 4) * 32 * 2
    assert "0-4 KV heads" in est.detail


def test_explicit_key_and_value_lengths(tmp_path: Path) -> None:
    def meta(writer: Any) -> None:
        llama_meta(writer)
        writer.add_key_length(24)
        writer.add_value_length(8)

    path, _ = write_model(tmp_path / "m.gguf", meta)
    assert estimate_gguf(path, ctx=10).kv_cache_bytes == 10 * 2 * 2 * (24 + 8) * 2


def test_missing_attention_keys_give_zero_kv_and_say_so(tmp_path: Path) -> None:
    def meta(writer: Any) -> None:
        writer.add_block_count(2)

    path, weights = write_model(tmp_path / "m.gguf", meta)
    est = estimate_gguf(path)
    assert est.weights_bytes == weights
    assert est.kv_cache_bytes == 0
    assert "llama.embedding_length" in est.detail
    assert "llama.attention.head_count" in est.detail


def test_split_model_counts_every_shard(tmp_path: Path) -> None:
    _, weights = write_model(tmp_path / "m.gguf", split_max_tensors=2)
    shards = sorted(tmp_path.glob("m-*-of-00002.gguf"))
    assert [p.name for p in shards] == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
    est = estimate_gguf(shards[0])
    assert est.weights_bytes == weights
    assert "2 shards" in est.detail
    shards[1].unlink()
    with pytest.raises(EstimateError, match=r"shard m-00002-of-00002\.gguf .* missing"):
        estimate_gguf(shards[0])


def test_big_tokenizer_arrays_are_skipped(tmp_path: Path) -> None:
    def meta(writer: Any) -> None:
        llama_meta(writer)
        writer.add_token_list([f"tok{i}" for i in range(100_000)])
        writer.add_token_scores([0.0] * 100_000)
        writer.add_array("x.nested", [[1, 2], [3]])

    path, weights = write_model(tmp_path / "m.gguf", meta)
    assert estimate_gguf(path).weights_bytes == weights


def test_every_value_type_parses_like_gguf_py(tmp_path: Path) -> None:
    """The header parser agrees with the reference reader on every GGUF value type."""
    gguf = pytest.importorskip("gguf")
    values: dict[str, Any] = {  # GGUFWriter method -> value; the key is named after it
        "add_uint8": 200, "add_int8": -100, "add_uint16": 60000, "add_int16": -30000,
        "add_uint32": 4_000_000_000, "add_int32": -2_000_000_000, "add_uint64": 2**63,
        "add_int64": -(2**62), "add_float32": 1.5, "add_float64": 2.25, "add_bool": True,
        "add_string": "héllo",
    }  # fmt: skip

    def meta(writer: Any) -> None:
        for method, value in values.items():
            getattr(writer, method)(f"t.{method}", value)
        writer.add_array("t.ints", [3, 1, 2])
        writer.add_array("t.strings", ["a", "bc"])

    path, _ = write_model(tmp_path / "m.gguf", meta)
    parsed = estimate._read_gguf(path).meta
    reader = gguf.GGUFReader(path)
    for method, value in values.items():
        key = f"t.{method}"
        assert parsed[key] == value == reader.get_field(key).contents(), key
    assert parsed["t.ints"] == [3, 1, 2]
    assert parsed["t.strings"] == estimate._Skipped(item_type=8, count=2)


# --- dispatch -------------------------------------------------------------------------------


def test_estimate_path_dispatches(tmp_path: Path) -> None:
    path = write(tmp_path, valid_raw())
    assert estimate_path(path).weights_bytes == 128
    # Ollama keeps GGUF models as extension-less blobs: the magic decides.
    blob = write(tmp_path, valid_raw(), "sha256-0123abcd")
    assert estimate_path(blob).weights_bytes == 128
    with pytest.raises(EstimateError, match=r"want \*\.gguf"):
        estimate_path(write(tmp_path, b"hello", "notes.txt"))
    with pytest.raises(EstimateError, match="no such file"):
        estimate_path(tmp_path / "absent.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EstimateError, match=r"neither config\.json nor"):
        estimate_path(tmp_path / "empty")


# --- hostile GGUF ---------------------------------------------------------------------------

HOSTILE: dict[str, tuple[bytes, str]] = {
    "zip file": (b"PK\x03\x04" + b"\0" * 60, r"not a GGUF file \(magic b'PK\\x03\\x04'\)"),
    "empty": (b"", r"not a GGUF file \(empty\)"),
    "short magic": (b"GG", "not a GGUF file"),
    "version 1": (raw_gguf(version=1), "unsupported GGUF version 1"),
    "big-endian": (b"GGUF" + struct.pack(">I", 3) + b"\0" * 16, "big-endian"),
    "truncated counts": (b"GGUF" + struct.pack("<IQ", 3, 0), "truncated .*metadata count"),
    "kv count 2**62": (raw_gguf(n_kv=2**62), "absurd metadata count"),
    "tensor count 2**40": (raw_gguf(n_tensors=2**40), "absurd tensor count"),
    "kv count past the end": (
        raw_gguf(n_kv=3),
        "truncated GGUF header: .* past the end of the file",
    ),
    "huge key": (raw_gguf([struct.pack("<Q", 2**60)]), "absurd length 1152921504606846976"),
    "huge string value": (
        raw_gguf([_str("k") + struct.pack("<IQ", 8, 2**33)]),
        "absurd length 8589934592 of value of 'k'",
    ),
    "string past the end": (raw_gguf([_str("k") + struct.pack("<IQ", 8, 1000)]), "truncated"),
    "unknown value type": (raw_gguf([_str("k") + struct.pack("<I", 13)]), "unknown value type 13"),
    "huge array": (
        raw_gguf([_str("k") + struct.pack("<IIQ", 9, 8, 2**40)]),
        "absurd array length 1099511627776 of 'k'",
    ),
    "array past the end": (
        raw_gguf([_str("k") + struct.pack("<IIQ", 9, 8, 40_000_000)]),
        "truncated GGUF header: array 'k'",
    ),
    "numeric array past the end": (
        raw_gguf([_str("k") + struct.pack("<IIQ", 9, 4, 40_000_000)]),
        "truncated GGUF header: array 'k'",
    ),
    "deep arrays": (
        raw_gguf([_str("k") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 9, 1) * 4]),
        "nests arrays deeper than 3",
    ),
    "duplicate key": (raw_gguf([kv_u32("k", 1), kv_u32("k", 2)]), "duplicate metadata key 'k'"),
    "bad alignment": (raw_gguf([kv_u32("general.alignment", 48)]), "not a power of two"),
    "unknown ggml type": (
        raw_gguf(tensors=[tensor_info("t", [32], type_id=99)]),
        "tensor 't' has unknown ggml type id 99",
    ),
    "five dims": (raw_gguf(tensors=[tensor_info("t", [1] * 5)]), "5 dimensions"),
    "row not a block multiple": (
        raw_gguf(tensors=[tensor_info("t", [33], type_id=8)], data=b"\0" * 64),
        "not a multiple of the Q8_0 block size 32",
    ),
    "tensor past the end": (
        raw_gguf(tensors=[tensor_info("t", [2**40, 2**20])], data=b"\0" * 128),
        "tensor 't' .* past the end of the file",
    ),
    "misaligned tensor": (
        raw_gguf(tensors=[tensor_info("t", [4], offset=4)], data=b"\0" * 64),
        "misaligned",
    ),
    "duplicate tensor": (
        raw_gguf(
            tensors=[tensor_info("t", [8]), tensor_info("t", [8], offset=32)], data=b"\0" * 64
        ),
        "duplicate tensor 't'",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_gguf_is_refused_naming_the_file(tmp_path: Path, case: str) -> None:
    data, message = HOSTILE[case]
    path = write(tmp_path, data)
    with pytest.raises(EstimateError, match=message) as caught:
        estimate_gguf(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_header_size_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(estimate, "MAX_HEADER_BYTES", 64)
    kvs = [_str("k") + struct.pack("<IIQ", 9, 8, 4) + _str("x" * 30) * 4]
    path = write(tmp_path, raw_gguf(kvs) + b"\0" * 1024)
    with pytest.raises(EstimateError, match=r"absurd GGUF header: .* ends past byte 64"):
        estimate_gguf(path)


def test_a_folder_is_not_a_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(EstimateError, match=f"^{tmp_path}: is a folder"):
        estimate_gguf(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EstimateError, match=f"^{tmp_path / 'x.gguf'}: cannot read"):
        estimate_gguf(tmp_path / "x.gguf")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_any_truncation_or_corruption_is_an_estimate_error(data: st.DataObject) -> None:
    """Cut or corrupt a valid file anywhere: the parser answers or says why, never crashes."""
    import tempfile

    valid = valid_raw()
    cut = data.draw(st.integers(0, len(valid) - 1), label="cut")
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), max_size=3)
    )
    corrupt = bytearray(valid)
    for at, byte in flips:
        corrupt[at] = byte
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), valid[:cut])
        with pytest.raises(EstimateError, match=f"^{path}: "):
            estimate_gguf(path)
        path = write(Path(tmp), bytes(corrupt))
        try:
            assert isinstance(estimate_gguf(path), MemoryEstimate)
        except EstimateError as e:
            assert str(e).startswith(f"{path}: ")


# --- Hugging Face folders -------------------------------------------------------------------


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A safetensors file of zeros; returns the bytes of tensor data it declares."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return offset


HF_CONFIG = {
    "model_type": "llama",
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "hidden_size": 256,
    "max_position_embeddings": 2048,
    "torch_dtype": "bfloat16",
}


def hf_folder(tmp_path: Path, config: dict[str, Any] | None = None) -> tuple[Path, int]:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIG if config is None else config))
    a = write_safetensors(folder / "model-00001-of-00002.safetensors", {"a": ("BF16", [256, 256])})
    b = write_safetensors(
        folder / "model-00002-of-00002.safetensors", {"b": ("F32", [3, 5]), "c": ("I8", [7])}
    )
    return folder, a + b


def test_hf_folder_weights_and_kv(tmp_path: Path) -> None:
    folder, weights = hf_folder(tmp_path)
    est = estimate_hf_folder(folder)
    assert est.weights_bytes == weights == 256 * 256 * 2 + 15 * 4 + 7
    # ctx 2048 * 4 layers * 2 KV heads * (32 + 32) head dims (256 / 8) * 2 bytes (bf16)
    assert est.kv_cache_bytes == 2048 * 4 * 2 * 64 * 2
    assert est.detail.startswith("HF llama, 2 safetensors: ")
    assert estimate_path(folder) == est
    assert estimate_hf_folder(folder, ctx=512).kv_cache_bytes == est.kv_cache_bytes // 4


def test_hf_config_variants(tmp_path: Path) -> None:
    nested = {
        "model_type": "llava",
        "text_config": {**HF_CONFIG, "head_dim": 16},
        "torch_dtype": "float32",
    }
    folder, _ = hf_folder(tmp_path, nested)
    assert estimate_hf_folder(folder).kv_cache_bytes == 2048 * 4 * 2 * 32 * 4
    (folder / "config.json").write_text(json.dumps({"model_type": "x", "hidden_size": 8}))
    est = estimate_hf_folder(folder)
    assert est.kv_cache_bytes == 0
    assert "num_hidden_layers" in est.detail


def test_hf_index_names_the_weight_set(tmp_path: Path) -> None:
    folder, _ = hf_folder(tmp_path)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert estimate_hf_folder(folder).weights_bytes == 256 * 256 * 2
    index = {"weight_map": {"a": "../elsewhere.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(EstimateError, match=r"elsewhere\.safetensors"):
        estimate_hf_folder(folder)


def test_hf_folder_errors(tmp_path: Path) -> None:
    folder, _ = hf_folder(tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(EstimateError, match=f"^{folder}: no config.json"):
        estimate_hf_folder(folder)
    (folder / "config.json").write_text("[1]")
    with pytest.raises(EstimateError, match="not a JSON object"):
        estimate_hf_folder(folder)
    (folder / "config.json").write_text("{")
    with pytest.raises(EstimateError, match=r"config\.json: not valid JSON"):
        estimate_hf_folder(folder)


def safetensors_header(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"abc", "shorter than 8 bytes"),
        (struct.pack("<Q", 2**50) + b"{}", "header length 1125899906842624 is absurd"),
        (struct.pack("<Q", 2) + b"{x", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (safetensors_header(b'{"t": {"data_offsets": [0, 99999]}}'), "bad data_offsets"),
        (safetensors_header(b'{"t": {"data_offsets": [8, 4]}}') + b"\0" * 8, "bad data_offsets"),
        (safetensors_header(b'{"t": {"dtype": "F16"}}'), "bad data_offsets"),
        (safetensors_header(b"[" * 100_000), "not valid JSON"),
    ],
)
def test_hostile_safetensors(tmp_path: Path, content: bytes, message: str) -> None:
    folder, _ = hf_folder(tmp_path)
    bad = folder / "model-00002-of-00002.safetensors"
    bad.write_bytes(content)
    with pytest.raises(EstimateError, match=message) as caught:
        estimate_hf_folder(folder)
    assert str(caught.value).startswith(f"{bad}: ")
