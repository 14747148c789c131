"""The pure parts of the llama-server router adapter, and the failure line of a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from helixd.providers.base import LoadError, ModelTarget
from helixd.providers.llama_router import (
    RouterModel,
    args_as_options,
    child_lines,
    preset_options,
    preset_path,
    render_preset,
    router_models,
    router_problem,
)
from helixd.providers.per_model import telling_line


def target(**changes: object) -> ModelTarget:
    values: dict[str, object] = {
        "name": "coder",
        "model_id": "coder",
        "path": Path("/models/coder.gguf"),
        "ctx": 4096,
        "gpu_layers": 999,
        "args": (),
        "gpu_index": None,
        "gpu_memory_utilization": 0.9,
    }
    values.update(changes)
    return ModelTarget(**values)  # type: ignore[arg-type]


def test_a_model_in_host_ram_is_kept_off_every_device() -> None:
    assert preset_options(target()) == {
        "model": "/models/coder.gguf",
        "ctx-size": "4096",
        "device": "none",
        "n-gpu-layers": "0",
        "load-on-startup": "false",
    }


def test_a_model_on_a_gpu_names_cuda_device_and_layers_and_takes_its_args() -> None:
    options = preset_options(
        target(
            gpu_index=1, gpu_layers=40, ctx=None, args=("--temp", "0.2", "--jinja", "-ngl", "-1")
        )
    )
    assert options["device"] == "CUDA1" and "ctx-size" not in options
    assert options["temp"] == "0.2" and options["jinja"] == "true"
    assert options["ngl"] == "-1"  # a negative number is a value, not an option


def test_args_in_the_equals_form_and_a_stray_value() -> None:
    assert args_as_options(["--cache-type-k=q8_0", "-fa"], "m") == {
        "cache-type-k": "q8_0",
        "fa": "true",
    }
    with pytest.raises(LoadError, match=r"models\.m\.args: 'x' follows no option"):
        args_as_options(["x"], "m")


def test_a_model_without_a_path_cannot_be_preset() -> None:
    with pytest.raises(LoadError, match=r"models\.coder\.path: required for a llamacpp-router"):
        preset_options(target(path=None))


def test_the_preset_file_has_a_section_per_model_in_order() -> None:
    text = render_preset({"b": {"model": "/b.gguf"}, "a": {"model": "/a.gguf", "c": "8"}})
    assert text.endswith("version = 1\n\n[a]\nmodel = /a.gguf\nc = 8\n\n[b]\nmodel = /b.gguf\n")


def test_the_preset_path_flag_wins_over_the_environment() -> None:
    env = {"LLAMA_ARG_MODELS_PRESET": "/state/r.models.ini"}
    assert preset_path(["llama-server"], env) == Path("/state/r.models.ini")
    assert preset_path(["llama-server", "--models-preset", "/x.ini"], env) == Path("/x.ini")
    assert preset_path(["llama-server", "--models-preset=/y.ini"], env) == Path("/y.ini")
    assert preset_path(["llama-server"], {}) is None


def test_router_models_reads_status_failure_and_the_childs_port() -> None:
    listing = {
        "data": [
            {"id": "a", "status": {"value": "loaded", "args": ["x", "--port", "41000"]}},
            {
                "id": "b",
                "status": {"value": "unloaded", "args": ["x"], "failed": True, "exit_code": 1},
            },
            {"id": "c"},
            "junk",
        ]
    }
    assert router_models(listing) == {
        "a": RouterModel("loaded", port=41000),
        "b": RouterModel("unloaded", failed=True, exit_code=1),
    }
    assert router_models({"error": "x"}) == {}


def test_child_lines_are_the_routers_lines_with_the_childs_port() -> None:
    lines = ["[41000] 0.00.1 E boom", "[ 4100] other", "0.1 I srv load", "[41000]"]
    assert child_lines(lines, 41000) == ["0.00.1 E boom"]
    assert child_lines(lines, 4100) == ["other"]


def test_a_router_with_its_own_limits_is_a_problem() -> None:
    ok = {"role": "router", "max_instances": 0, "models_autoload": False}
    assert router_problem(ok, "r") is None
    problem = router_problem({**ok, "max_instances": 4, "models_autoload": True}, "r")
    assert problem is not None
    assert problem.startswith(
        "r: it evicts on its own past --models-max 4 and it loads models on its own"
    )
    single = router_problem({"total_slots": 4}, "r")
    assert single is not None and "remove -m/--model" in single


def test_telling_line_takes_llamas_first_error_without_its_prefix() -> None:
    lines = [
        "0.00.004.958 W srv  llama_server: security: no API key is set",
        "0.00.006.346 E gguf_init_from_reader: invalid magic characters: 'not ', expected 'GGUF'",
        "0.00.006.453 E llama_model_load: error loading model: failed",
        "0.00.007.077 E srv  llama_server: exiting due to model loading error",
    ]
    assert telling_line(lines) == (
        "gguf_init_from_reader: invalid magic characters: 'not ', expected 'GGUF'"
    )
    assert telling_line(["starting", "Error: CUDA out of memory", "bye"]) == (
        "Error: CUDA out of memory"
    )
    assert telling_line(["all fine"]) is None
