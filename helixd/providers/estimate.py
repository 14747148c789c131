"""Memory a model will need, estimated from its files without loading it.

The scheduler must decide whether a model fits *before* it starts a process, so this
module reads only headers: a GGUF file's metadata and tensor table, or a Hugging Face
folder's ``config.json`` and safetensors headers. Model files come from the internet, so
every header is treated as hostile: counts and lengths are capped, reads are bounded and
any inconsistency is an :class:`EstimateError` naming the file, never another exception.

The figures are estimates: weights are exact, the KV cache follows the plain attention
formula (an upper bound for sliding-window and latent-attention models), and the compute
overhead is a rule of thumb. helixd learns real sizes once a model has been loaded.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from helixd.errors import ProviderError

GIB = 1024**3
MIB = 1024**2
# llama.cpp's compute buffers grow with the graph (batch * context * width) and the logits
# (batch * vocab), which scale roughly with model size; measured buffers are a few percent
# of the weights plus a fixed part for the backend itself, so 5 % + 256 MiB is a safe
# middle that neither refuses small models on small GPUs nor overbooks big ones.
OVERHEAD_FRACTION = 0.05
OVERHEAD_FIXED_BYTES = 256 * MIB
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default cache type is f16

# Hostile-header caps: far above any real model, low enough that a crafted count cannot
# make helixd allocate or loop for long before the file runs out.
MAX_TENSORS = 1_000_000
MAX_KV_PAIRS = 100_000
MAX_STRING_BYTES = 16 * MIB
MAX_ARRAY_ITEMS = 50_000_000
MAX_ARRAY_DEPTH = 3
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_KEPT_ARRAY_ITEMS = 65_536  # numeric arrays up to this are kept (per-layer head counts)
# Real GGUF headers (metadata plus tensor table) are a few MiB even with 256k-token
# vocabularies and their merges; the cap bounds the work a crafted header can cause.
MAX_HEADER_BYTES = 256 * MIB
MAX_SAFETENSORS_HEADER = 100 * MIB  # the safetensors library's own limit
MAX_JSON_BYTES = 16 * MIB  # config.json and safetensors indexes are kilobytes
_CHUNK = 64 * 1024

# (name, block size in elements, bytes per block) per ggml type id, copied from gguf-py 0.19.0's
# ``gguf.constants.GGML_QUANT_SIZES`` (keyed by ``GGMLQuantizationType``);
# tests/unit/test_estimate.py checks this copy against the installed package.
GGML_TYPE_SIZES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}  # fmt: skip

# GGUF metadata value types (gguf.GGUFValueType) and the struct codes of the fixed-size ones.
_STRING, _ARRAY = 8, 9
_SCALARS: dict[int, struct.Struct] = {
    t: struct.Struct("<" + code)
    for t, code in {
        0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"
    }.items()
}  # fmt: skip
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_SHARD_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_HF_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8": 1}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs once loaded: weights, KV cache at a context length, overhead."""

    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int  # compute buffers etc.: OVERHEAD_FRACTION of weights + fixed part
    total_bytes: int  # the sum of the three
    detail: str  # one line for humans: where the figures came from


class EstimateError(ProviderError):
    """A model's files cannot be estimated; the message names the file and what is wrong."""

    code = "cannot_estimate"


def estimate_path(path: Path, ctx: int | None = None) -> MemoryEstimate:
    """Estimate a ``*.gguf`` file (or any file starting with GGUF magic, like Ollama's
    blobs) or a Hugging Face folder with ``config.json`` and ``*.safetensors``."""
    if path.is_dir():
        if (path / "config.json").is_file() or any(path.glob("*.safetensors")):
            return estimate_hf_folder(path, ctx)
        raise EstimateError(f"{path}: folder has neither config.json nor *.safetensors")
    if path.is_file():
        if path.suffix.lower() == ".gguf" or _starts_with(path, b"GGUF"):
            return estimate_gguf(path, ctx)
        raise EstimateError(f"{path}: not a model file helixd can estimate (want *.gguf)")
    raise EstimateError(f"{path}: no such file or folder")


def estimate_gguf(path: Path, ctx: int | None = None) -> MemoryEstimate:
    """Estimate a GGUF model (the first shard of a split one stands for all its shards).

    ``ctx`` is the context length the KV cache is sized for; None or 0 (llama.cpp's "from
    the model") means the context length the model was trained with.
    """
    _check_ctx(ctx)
    header = _read_gguf(path)
    weights = header.weights_bytes
    split_count = _int(header.meta.get("split.count")) or 1
    if split_count > 1:
        weights = sum(_read_gguf(p).weights_bytes for p in _shard_paths(path, split_count))
    arch = header.meta.get("general.architecture")
    arch = arch if isinstance(arch, str) else "?"
    kv, kv_detail = _gguf_kv_cache(header.meta, arch, ctx)
    shards = f", {split_count} shards" if split_count > 1 else ""
    return _estimate(weights, kv, f"GGUF {arch}{shards}", kv_detail)


def estimate_hf_folder(path: Path, ctx: int | None = None) -> MemoryEstimate:
    """Estimate a Hugging Face model folder from config.json and its safetensors headers;
    ``ctx`` as for :func:`estimate_gguf` (the default is ``max_position_embeddings``)."""
    _check_ctx(ctx)
    config_path = path / "config.json"
    if not path.is_dir():
        raise EstimateError(f"{path}: not a folder")
    if not config_path.is_file():
        raise EstimateError(f"{path}: no config.json in the model folder")
    config = _read_json(config_path)
    files = _safetensors_files(path)
    weights = sum(_safetensors_bytes(f) for f in files)
    kv, kv_detail = _hf_kv_cache(config, ctx)
    model_type = config.get("model_type")
    label = f"HF {model_type if isinstance(model_type, str) else '?'}, {len(files)} safetensors"
    return _estimate(weights, kv, label, kv_detail)


def _check_ctx(ctx: int | None) -> None:
    if ctx is not None and ctx < 0:
        raise ValueError(f"context length must not be negative, got {ctx}")


def _estimate(weights: int, kv: int, label: str, kv_detail: str) -> MemoryEstimate:
    overhead = int(weights * OVERHEAD_FRACTION) + OVERHEAD_FIXED_BYTES
    detail = (
        f"{label}: {format_bytes(weights)} weights + {format_bytes(kv)} KV {kv_detail}"
        f" + {format_bytes(overhead)} overhead"
    )
    return MemoryEstimate(weights, kv, overhead, weights + kv + overhead, detail)


def format_bytes(n: int) -> str:
    """Bytes in the largest binary unit that keeps a leading digit: ``4.1 GiB``."""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# --- KV cache -------------------------------------------------------------------------------


def _kv_bytes(
    n_ctx: int,
    n_layer: int,
    heads: Sequence[int],
    kv_heads: Sequence[int],
    n_embd: int,
    k_len: int | None,
    v_len: int | None,
    elem_bytes: int,
) -> int:
    """n_ctx * Σ_layers n_head_kv * (k_len + v_len) * element bytes."""
    total = 0
    for layer in range(n_layer):
        n_head, n_kv = heads[layer % len(heads)], kv_heads[layer % len(kv_heads)]
        # A layer without heads (recurrent layers of hybrid models) has no KV cache.
        default = n_embd // n_head if n_head > 0 else 0
        k, v = k_len if k_len is not None else default, v_len if v_len is not None else default
        total += n_kv * (k + v)
    return n_ctx * total * elem_bytes


def _gguf_kv_cache(meta: dict[str, object], arch: str, ctx: int | None) -> tuple[int, str]:
    def get(key: str) -> object:
        return meta.get(f"{arch}.{key}")

    n_layer, n_embd = _int(get("block_count")), _int(get("embedding_length"))
    n_ctx = ctx or _int(get("context_length"))
    heads = _ints(get("attention.head_count"))
    kv_heads = _ints(get("attention.head_count_kv")) or heads
    needed = {
        "general.architecture": arch if arch != "?" else None,
        f"{arch}.block_count": n_layer,
        f"{arch}.embedding_length": n_embd,
        f"{arch}.context_length": n_ctx,
        f"{arch}.attention.head_count": heads or None,
    }
    missing = [k for k, v in needed.items() if v is None]
    if missing or n_layer is None or n_embd is None or n_ctx is None or not heads:
        return 0, f"(unknown: no {', '.join(missing)})"
    k_len, v_len = _int(get("attention.key_length")), _int(get("attention.value_length"))
    kv = _kv_bytes(n_ctx, n_layer, heads, kv_heads, n_embd, k_len, v_len, KV_BYTES_PER_ELEMENT)
    return kv, f"(ctx {n_ctx}, {n_layer} layers, {_heads_text(kv_heads)} KV heads)"


def _hf_kv_cache(config: dict[str, object], ctx: int | None) -> tuple[int, str]:
    # Multimodal configs nest the language model's figures under text_config; top-level
    # keys (the dtype the model is served in) still win.
    text = config.get("text_config")
    if "num_hidden_layers" not in config and isinstance(text, dict):
        config = {**text, **config}
    n_layer, n_embd = _int(config.get("num_hidden_layers")), _int(config.get("hidden_size"))
    n_head = _int(config.get("num_attention_heads"))
    n_ctx = ctx or _int(config.get("max_position_embeddings"))
    needed = {
        "num_hidden_layers": n_layer,
        "hidden_size": n_embd,
        "num_attention_heads": n_head or None,
        "max_position_embeddings": n_ctx,
    }
    missing = [k for k, v in needed.items() if v is None]
    if missing or n_layer is None or n_embd is None or not n_head or n_ctx is None:
        return 0, f"(unknown: config.json has no {', '.join(missing)})"
    n_kv = _int(config.get("num_key_value_heads")) or n_head
    head_dim = _int(config.get("head_dim"))
    dtype = config.get("torch_dtype", config.get("dtype"))
    elem = _HF_DTYPE_BYTES.get(dtype, 2) if isinstance(dtype, str) else 2
    kv = _kv_bytes(n_ctx, n_layer, [n_head], [n_kv], n_embd, head_dim, head_dim, elem)
    return kv, f"(ctx {n_ctx}, {n_layer} layers, {n_kv} KV heads)"


def _heads_text(heads: Sequence[int]) -> str:
    low, high = min(heads), max(heads)
    return str(low) if low == high else f"{low}-{high}"


def _int(value: object) -> int | None:
    """A non-negative integer metadata value, or None (bools and floats are not counts)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _ints(value: object) -> list[int]:
    """A count that may be one number or one per layer (e.g. ``head_count_kv``)."""
    if isinstance(value, list):
        items = [_int(v) for v in value]
        return [v for v in items if v is not None] if None not in items else []
    one = _int(value)
    return [one] if one is not None else []


# --- GGUF -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Skipped:
    """An array the parser stepped over without keeping (tokenizer vocabularies etc.)."""

    item_type: int
    count: int


@dataclass(frozen=True)
class _GgufHeader:
    meta: dict[str, object]
    weights_bytes: int
    parameters: int = 0  # elements of all tensors


@dataclass(frozen=True)
class GgufSummary:
    """A GGUF model's metadata (arrays it skipped stand in as placeholders), and its
    weight bytes and parameter count over all its shards."""

    meta: dict[str, object]
    weights_bytes: int
    parameters: int


def read_gguf_summary(path: Path) -> GgufSummary:
    """The header of a GGUF model (bounded reads, as for estimates); :class:`EstimateError`
    naming the file when it is not a GGUF model helixd can read."""
    header = _read_gguf(path)
    weights, parameters = header.weights_bytes, header.parameters
    split_count = _int(header.meta.get("split.count")) or 1
    if split_count > 1:
        shards = [_read_gguf(p) for p in _shard_paths(path, split_count)]
        weights = sum(s.weights_bytes for s in shards)
        parameters = sum(s.parameters for s in shards)
    return GgufSummary(header.meta, weights, parameters)


class _Reader:
    """Reads a file forwards through a small window: memory stays bounded whatever the
    header claims, and running out of file is an EstimateError saying where."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self._f, self._path, self.size = f, path, size
        self._buf, self._pos, self._start = b"", 0, 0

    @property
    def offset(self) -> int:
        return self._start + self._pos

    @property
    def remaining(self) -> int:
        """Bytes the header may still take: to the end of the file or of MAX_HEADER_BYTES."""
        return min(self.size, MAX_HEADER_BYTES) - self.offset

    def overrun(self, n: int, what: str) -> EstimateError:
        if self.offset + n > MAX_HEADER_BYTES and self.size > MAX_HEADER_BYTES:
            return EstimateError(
                f"{self._path}: absurd GGUF header: {what} ends past byte {MAX_HEADER_BYTES}"
            )
        return EstimateError(
            f"{self._path}: truncated GGUF header: {what} runs past the end of the file "
            f"(at byte {self.offset} of {self.size})"
        )

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise self.overrun(n, what)
        if self._pos + n > len(self._buf):
            rest = self._buf[self._pos :]
            self._start += self._pos
            self._buf, self._pos = rest + self._f.read(max(n - len(rest), _CHUNK)), 0
            if len(self._buf) < n:  # the file shrank while we read it
                raise self.overrun(n, what)
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.remaining:
            raise self.overrun(n, what)
        if self._pos + n <= len(self._buf):
            self._pos += n
            return
        target = self.offset + n
        self._f.seek(target)
        self._buf, self._pos, self._start = b"", 0, target

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = _U64.unpack(self.take(8, what))[0]
        return value


def _read_gguf(path: Path) -> _GgufHeader:
    try:
        with path.open("rb", buffering=0) as f:
            size = f.seek(0, 2)
            f.seek(0)
            return _parse_gguf(_Reader(f, path, size), path)
    except IsADirectoryError:
        raise EstimateError(f"{path}: is a folder, not a GGUF file") from None
    except OSError as e:
        raise EstimateError(f"{path}: cannot read ({e.strerror or e})") from None


def _parse_gguf(r: _Reader, path: Path) -> _GgufHeader:
    if r.size == 0:
        raise EstimateError(f"{path}: not a GGUF file (empty)")
    magic = r.take(min(4, r.size), "magic")
    if magic != b"GGUF":
        raise EstimateError(f"{path}: not a GGUF file (magic {magic!r})")
    version = r.u32("version")
    if version not in (2, 3):
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        hint = "big-endian GGUF is not supported" if swapped in (2, 3) else "want 2 or 3"
        raise EstimateError(f"{path}: unsupported GGUF version {version} ({hint})")
    n_tensors, n_kv = r.u64("tensor count"), r.u64("metadata count")
    if n_tensors > MAX_TENSORS:
        raise EstimateError(f"{path}: absurd tensor count {n_tensors} (max {MAX_TENSORS})")
    if n_kv > MAX_KV_PAIRS:
        raise EstimateError(f"{path}: absurd metadata count {n_kv} (max {MAX_KV_PAIRS})")
    meta: dict[str, object] = {}
    for i in range(n_kv):
        key = _string(r, path, f"metadata key {i}")
        if key in meta:
            raise EstimateError(f"{path}: duplicate metadata key {key!r}")
        meta[key] = _value(r, path, r.u32(f"type of {key!r}"), key, 0)
    alignment = _int(meta.get("general.alignment", 32))
    if not alignment or alignment & (alignment - 1):
        raise EstimateError(f"{path}: general.alignment {alignment} is not a power of two")
    tensors = [_tensor_info(r, path, i) for i in range(n_tensors)]
    data_offset = -(-r.offset // alignment) * alignment
    weights, parameters, names = 0, 0, set()
    for name, offset, nbytes, elements in tensors:
        if name in names:
            raise EstimateError(f"{path}: duplicate tensor {name!r}")
        names.add(name)
        if offset % alignment or data_offset + offset + nbytes > r.size:
            raise EstimateError(
                f"{path}: tensor {name!r} at data offset {offset} (+{nbytes} bytes) is "
                f"misaligned or past the end of the file ({r.size} bytes; truncated download?)"
            )
        weights += nbytes
        parameters += elements
    return _GgufHeader(meta, weights, parameters)


def _tensor_info(r: _Reader, path: Path, i: int) -> tuple[str, int, int, int]:
    name = _string(r, path, f"tensor {i} name")
    n_dims = r.u32(f"dimension count of tensor {name!r}")
    if n_dims > MAX_DIMS:
        raise EstimateError(f"{path}: tensor {name!r} has {n_dims} dimensions (max {MAX_DIMS})")
    dims = [r.u64(f"dimensions of tensor {name!r}") for _ in range(n_dims)]
    type_id = r.u32(f"type of tensor {name!r}")
    offset = r.u64(f"offset of tensor {name!r}")
    if type_id not in GGML_TYPE_SIZES:
        raise EstimateError(f"{path}: tensor {name!r} has unknown ggml type id {type_id}")
    type_name, block, block_bytes = GGML_TYPE_SIZES[type_id]
    if dims and dims[0] % block:
        raise EstimateError(
            f"{path}: tensor {name!r} row of {dims[0]} is not a multiple of the "
            f"{type_name} block size {block}"
        )
    elements = math.prod(dims)
    return name, offset, elements // block * block_bytes, elements


def _string(r: _Reader, path: Path, what: str) -> str:
    n = r.u64(f"length of {what}")
    if n > MAX_STRING_BYTES:
        raise EstimateError(f"{path}: absurd length {n} of {what} (max {MAX_STRING_BYTES})")
    return r.take(n, what).decode("utf-8", errors="replace")


def _value(r: _Reader, path: Path, vtype: int, key: str, depth: int) -> object:
    scalar = _SCALARS.get(vtype)
    if scalar is not None:
        value: object = scalar.unpack(r.take(scalar.size, f"value of {key!r}"))[0]
        return bool(value) if vtype == 7 else value
    if vtype == _STRING:
        return _string(r, path, f"value of {key!r}")
    if vtype != _ARRAY:
        raise EstimateError(f"{path}: metadata {key!r} has unknown value type {vtype}")
    if depth >= MAX_ARRAY_DEPTH:
        raise EstimateError(f"{path}: metadata {key!r} nests arrays deeper than {depth}")
    item_type, count = r.u32(f"item type of {key!r}"), r.u64(f"length of {key!r}")
    if count > MAX_ARRAY_ITEMS:
        raise EstimateError(f"{path}: absurd array length {count} of {key!r}")
    item = _SCALARS.get(item_type)
    if item is None:
        if item_type not in (_STRING, _ARRAY):
            raise EstimateError(f"{path}: metadata {key!r} has unknown item type {item_type}")
        # Every string or array item takes at least its 8-byte length: a count the rest of
        # the file cannot hold is refused before looping over it.
        if count * 8 > r.remaining:
            raise r.overrun(count * 8, f"array {key!r}")
        for _ in range(count):
            if item_type == _STRING:
                _string_skip(r, path, key)
            else:
                _value(r, path, _ARRAY, key, depth + 1)
        return _Skipped(item_type, count)
    if count > MAX_KEPT_ARRAY_ITEMS:
        r.skip(count * item.size, f"array {key!r}")
        return _Skipped(item_type, count)
    return [v for (v,) in item.iter_unpack(r.take(count * item.size, f"array {key!r}"))]


def _string_skip(r: _Reader, path: Path, key: str) -> None:
    n = r.u64(f"item length of {key!r}")
    if n > MAX_STRING_BYTES:
        raise EstimateError(f"{path}: absurd string length {n} in {key!r}")
    r.skip(n, f"item of {key!r}")


def _shard_paths(path: Path, count: int) -> list[Path]:
    """All shards of a split GGUF, named like llama.cpp's gguf-split names them."""
    m = _SHARD_RE.match(path.name)
    if m is None or int(m["count"]) != count:
        raise EstimateError(
            f"{path}: split.count is {count} but the name is not <prefix>-NNNNN-of-"
            f"{count:05d}.gguf, so the other shards cannot be found"
        )
    shards = [
        path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    ]
    for shard in shards:
        if not shard.is_file():
            raise EstimateError(f"{path}: shard {shard.name} of the split model is missing")
    return shards


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


# --- safetensors ----------------------------------------------------------------------------


def _safetensors_files(folder: Path) -> list[Path]:
    # Some repos ship one weight set twice (consolidated.safetensors beside model-*-of-*);
    # the index names the set loaders actually use.
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise EstimateError(f"{index}: no weight_map object in the safetensors index")
        names = sorted({str(v) for v in weight_map.values()})
        for name in names:
            # Only plain file names: an index must not point helixd outside the folder.
            if "/" in name or name in ("", ".", "..") or not (folder / name).is_file():
                raise EstimateError(f"{index}: names {name!r}, which is not a file in {folder}")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise EstimateError(f"{folder}: no *.safetensors files (other formats are not supported)")
    return files


def _read_json(path: Path) -> dict[str, object]:
    """A small JSON object file (config.json, an index), read with a size cap."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise EstimateError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise EstimateError(f"{path}: larger than {MAX_JSON_BYTES // MIB} MiB, not a config")
    value = _parse_json(path, raw)
    if not isinstance(value, dict):
        raise EstimateError(f"{path}: not a JSON object")
    return value


def _parse_json(path: Path, raw: bytes) -> object:
    try:
        return json.loads(raw)
    # RecursionError: a crafted "[[[[..." nests deeper than the parser's stack.
    except (ValueError, RecursionError) as e:
        raise EstimateError(f"{path}: not valid JSON ({e})") from None


def _safetensors_bytes(path: Path) -> int:
    """Sum of the tensors' byte ranges declared in one file's JSON header."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            raw = f.read(8)
            if len(raw) < 8:
                raise EstimateError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            n = _U64.unpack(raw)[0]
            if n > min(MAX_SAFETENSORS_HEADER, size - 8):
                raise EstimateError(f"{path}: safetensors header length {n} is absurd")
            raw = f.read(n)
    except OSError as e:
        raise EstimateError(f"{path}: cannot read ({e.strerror or e})") from None
    header = _parse_json(path, raw)
    if not isinstance(header, dict):
        raise EstimateError(f"{path}: safetensors header is not a JSON object")
    data_size, total = size - 8 - n, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_int(o) is not None for o in offsets)
            or not offsets[0] <= offsets[1] <= data_size
        ):
            raise EstimateError(f"{path}: tensor {name!r} has bad data_offsets {offsets!r}")
        total += offsets[1] - offsets[0]
    return total
