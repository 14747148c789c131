"""Which memory figure a model gets: declared, else measured, else estimated."""

from __future__ import annotations

from helixd.config import ModelConfig, ProviderConfig
from helixd.scheduler.sizing import memory_figure, size_key

MiB = 1024**2
MEASURED = {"vram_bytes": 5000 * MiB, "ram_bytes": 300 * MiB}


def model(**keys: object) -> ModelConfig:
    return ModelConfig.model_validate({"provider": "llama", **keys})


def test_declared_wins_over_measured_and_estimated() -> None:
    figure = memory_figure(model(vram_mib=4096, ram_mib=512), MEASURED, 9 * 1024 * MiB, "", True)
    assert (figure.vram_bytes, figure.ram_bytes, figure.source) == (
        4096 * MiB,
        512 * MiB,
        "declared",
    )


def test_a_half_declaration_takes_the_other_half_from_the_measurement() -> None:
    figure = memory_figure(model(ram_mib=512), MEASURED, None, "", on_gpu=True)
    assert (figure.vram_bytes, figure.ram_bytes) == (5000 * MiB, 512 * MiB)


def test_measured_beats_the_estimate() -> None:
    figure = memory_figure(model(), MEASURED, 9 * 1024 * MiB, "GGUF", True)
    assert figure.source == "measured" and figure.vram_bytes == 5000 * MiB


def test_the_estimate_lands_on_the_device_the_model_will_use() -> None:
    on_gpu = memory_figure(model(), None, 700 * MiB, "GGUF llama", on_gpu=True)
    in_ram = memory_figure(model(), None, 700 * MiB, "GGUF llama", on_gpu=False)
    assert (on_gpu.vram_bytes, on_gpu.ram_bytes, on_gpu.source) == (700 * MiB, 0, "estimated")
    assert (in_ram.vram_bytes, in_ram.ram_bytes) == (0, 700 * MiB)
    assert on_gpu.detail == "GGUF llama"


def test_nothing_known_is_said_plainly() -> None:
    figure = memory_figure(model(), None, None, "no estimate: /m.gguf: not a GGUF file", True)
    assert figure.source == "unknown" and figure.detail.startswith("no estimate")


def test_the_remembered_size_belongs_to_the_parameters_that_shape_it() -> None:
    provider = ProviderConfig(kind="openai", command=["srv", "{model_path}", "{ctx}"])
    base = size_key("m", "p", provider, model(path="/a.gguf", ctx=4096), on_gpu=True)
    assert base == size_key("m", "p", provider, model(path="/a.gguf", ctx=4096), on_gpu=True)
    # keep_alive or pins do not change the size; the context, file and placement do.
    assert base == size_key(
        "m", "p", provider, model(path="/a.gguf", ctx=4096, keep_alive="1h", pinned=True), True
    )
    assert base != size_key("m", "p", provider, model(path="/a.gguf", ctx=8192), on_gpu=True)
    assert base != size_key("m", "p", provider, model(path="/b.gguf", ctx=4096), on_gpu=True)
    assert base != size_key("m", "p", provider, model(path="/a.gguf", ctx=4096), on_gpu=False)
