"""Config validation: every mistake names the file, the dotted key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from helixd.config import ConfigError, LoadedConfig, load_config


def _load(tmp_path: Path, text: str) -> LoadedConfig:
    path = tmp_path / "helixd.toml"
    path.write_text(text)
    return load_config(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return str(info.value)


def test_minimal_echo_config_is_valid(tmp_path: Path) -> None:
    loaded = _load(tmp_path, '[providers.demo]\nkind = "echo"\n')
    provider = loaded.config.providers["demo"]
    assert provider.kind == "echo" and provider.port == "auto" and provider.restart == "on-failure"


def test_bad_enum_value_names_file_key_and_choices(tmp_path: Path) -> None:
    message = _error(tmp_path, '[providers.ollama]\nkind = "ollama"\nrestart = "allways"\n')
    assert message == (
        "helixd.toml: providers.ollama.restart: expected one of always, on-failure, never; "
        "got 'allways'"
    )


def test_unknown_key_lists_the_allowed_ones(tmp_path: Path) -> None:
    message = _error(tmp_path, '[providers.x]\nkind = "echo"\nrestrat = "always"\n')
    assert message.startswith("helixd.toml: providers.x.restrat: unknown key; allowed keys here:")
    assert "restart" in message


def test_a_near_miss_of_a_key_gets_did_you_mean(tmp_path: Path) -> None:
    message = _error(tmp_path, '[models.m]\nprovider = "x"\nkeepalive = "5m"\n')
    assert message.startswith("helixd.toml: models.m.keepalive: unknown key; allowed keys")
    assert message.endswith("; did you mean 'keep_alive'?")
    message = _error(tmp_path, '[providers.x]\nkind = "echo"\nstart-retries = 2\n')
    assert message.endswith("; did you mean 'start_retries'?")
    message = _error(tmp_path, '[providers.x]\nkind = "echo"\nfrobnicate = 1\n')
    assert "did you mean" not in message


def test_a_command_holds_literal_braces_written_doubled(tmp_path: Path) -> None:
    from tests.conftest import make_spec

    text = (
        '[providers.x]\nkind = "echo"\n'
        'command = ["srv", "--port", "{port}", "--json", "{{\\"a\\": {{\\"b\\": 1}}}}"]\n'
    )
    provider = _load(tmp_path, text).config.providers["x"]
    spec = make_spec(tmp_path, "x", **provider.model_dump(exclude_unset=True))
    assert spec.argv[-2:] == ("--json", '{"a": {"b": 1}}')


def test_unknown_top_level_section(tmp_path: Path) -> None:
    message = _error(tmp_path, "[deamon]\n")
    assert message.startswith("helixd.toml: deamon: unknown key; allowed keys here: daemon")


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    message = _error(tmp_path, '[providers.x]\nkind = "echo"\nstart_retries = "three"\n')
    assert message == "helixd.toml: providers.x.start_retries: expected an integer; got 'three'"


def test_command_must_be_a_list_not_a_shell_string(tmp_path: Path) -> None:
    message = _error(tmp_path, '[providers.x]\nkind = "openai"\ncommand = "my-server --port 1"\n')
    assert "providers.x.command: expected a list" in message


def test_missing_kind(tmp_path: Path) -> None:
    message = _error(tmp_path, '[providers.x]\ncommand = ["a"]\n')
    assert message == "helixd.toml: providers.x.kind: required key is missing"


def test_kind_without_default_command_needs_one(tmp_path: Path) -> None:
    message = _error(tmp_path, '[providers.x]\nkind = "openai"\n')
    assert "providers.x.command: required for kind 'openai'" in message


def test_unknown_placeholder(tmp_path: Path) -> None:
    message = _error(tmp_path, '[providers.x]\nkind = "openai"\ncommand = ["s", "{prot}"]\n')
    assert "providers.x.command: unknown placeholder {prot}; allowed:" in message


def test_unbalanced_brace_is_reported_not_raised(tmp_path: Path) -> None:
    message = _error(tmp_path, '[providers.x]\nkind = "openai"\ncommand = ["s", "{port"]\n')
    assert "providers.x.command:" in message and "{{" in message


def test_duplicate_fixed_port(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        '[providers.a]\nkind = "echo"\nport = 9000\n[providers.b]\nkind = "echo"\nport = 9000\n',
    )
    assert "providers.b.port: 9000 is already used by providers.a" in message


def test_port_range_and_signal_and_duration(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        '[providers.a]\nkind = "echo"\nport = 70000\nstop_signal = "SIGFOO"\n'
        'backoff_max_s = "soon"\n',
    )
    assert "providers.a.port: expected a TCP port from 1 to 65535 or 'auto'; got 70000" in message
    assert "providers.a.stop_signal: expected a signal name" in message
    assert "providers.a.backoff_max_s: expected a duration" in message


def test_durations_and_sizes_accept_units(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path,
        '[providers.a]\nkind = "echo"\nstart_seconds = "2m"\nstop_signal = "int"\n'
        'log = { max_bytes = "1MiB", backups = 2 }\n',
    )
    provider = loaded.config.providers["a"]
    assert provider.start_seconds == 120
    assert provider.stop_signal == "SIGINT"
    assert provider.log.max_bytes == 1024 * 1024


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file; create one with 'helixctl init'"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_names_line(tmp_path: Path) -> None:
    message = _error(tmp_path, "[providers.x\n")
    assert message.startswith(f"{tmp_path / 'helixd.toml'}: not valid TOML:")
    assert "line 1" in message


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    loaded = _load(tmp_path, '[daemon]\nstate_dir = "state"\nsocket = "run/h.sock"\n')
    paths = loaded.paths("user")
    assert paths.state_dir == tmp_path / "state"
    assert paths.socket == tmp_path / "run" / "h.sock"
    assert paths.socket_mode == 0o600


def test_system_mode_defaults(tmp_path: Path) -> None:
    paths = _load(tmp_path, "").paths("system")
    assert str(paths.socket) == "/run/helixd/helixd.sock"
    assert paths.socket_mode == 0o660 and paths.socket_group == "helixd"


def test_example_config_in_etc_is_valid() -> None:
    example = Path(__file__).parents[2] / "etc" / "helixd.toml"
    loaded = load_config(example)
    assert "demo" in loaded.config.providers


LLAMA = """
[providers.llama]
kind = "llamacpp"
command = ["llama-server", "-m", "{model_path}", "--port", "{port}", "-c", "{ctx}"]
[providers.ollama]
kind = "ollama"
"""


def test_residency_sections_parse_with_defaults(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path,
        LLAMA
        + '[resources]\ngpus = [0, 1]\n[scheduler]\nkeep_alive = "forever"\n'
        + '[models.coder]\nprovider = "llama"\npath = "/m/c.gguf"\nctx = 8192\n'
        + 'keep_alive = "30m"\naliases = ["code"]\n',
    )
    config = loaded.config
    assert config.resources.gpus == [0, 1] and config.resources.vram_reserve_mib == 512
    assert config.scheduler.keep_alive == float("inf")
    coder = config.models["coder"]
    assert coder.keep_alive == 1800 and coder.gpu_layers == 999 and coder.max_concurrency == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[models.x]\nprovider = "nope"\n',
            "helixd.toml: models.x.provider: no provider named 'nope'; providers: llama, ollama",
        ),
        (
            '[providers.srv]\nkind = "openai"\ncommand = ["my-server", "--port", "{port}"]\n'
            '[models.x]\nprovider = "srv"\n',
            "helixd.toml: models.x.provider: 'srv' (kind openai) runs one server for all "
            "its models, which this version cannot load or unload for that kind; use a "
            "provider whose command is a per-model template (with {model_path} or {model}), "
            "or one of kind remote, ollama, llamacpp-router, localai or tabbyapi",
        ),
        (
            '[models.x]\nprovider = "ollama"\nsleep_mode = true\n',
            "helixd.toml: models.x.sleep_mode: only vLLM has a sleep mode; providers.ollama "
            "is kind ollama; remove sleep_mode",
        ),
        (
            '[models.x]\nprovider = "llama"\nctx = 4096\n',
            "helixd.toml: models.x.path: required, because providers.llama.command uses "
            "{model_path}; e.g. path = '/models/qwen2.5-7b-instruct-q4_k_m.gguf'",
        ),
        (
            '[providers.router]\nkind = "llamacpp-router"\n[models.x]\nprovider = "router"\n',
            "helixd.toml: models.x.path: required, because providers.router is a llama-server "
            "router (kind llamacpp-router) that loads the GGUF file helixd names; "
            "e.g. path = '/models/qwen2.5-7b-instruct-q4_k_m.gguf'",
        ),
        (
            '[models.x]\nprovider = "llama"\npath = "/m.gguf"\n',
            "helixd.toml: models.x.ctx: required, because providers.llama.command uses {ctx}; "
            "e.g. ctx = 8192",
        ),
        (
            '[models.x]\nprovider = "llama"\npath = "/a"\nctx = 512\naliases = ["y"]\n'
            '[models.y]\nprovider = "llama"\npath = "/b"\nctx = 512\n',
            "helixd.toml: models.x.aliases: 'y' is already taken by models.y",
        ),
        (
            '[models.x]\nprovider = "llama"\npath = "/a"\nctx = 512\nkeep_alive = "soon"\n',
            "helixd.toml: models.x.keep_alive: expected a duration such as 30, '30s', '10m', "
            "'1h' or '7d'; got 'soon'",
        ),
        (
            '[resources]\ngpus = "all"\n',
            "helixd.toml: resources.gpus: expected 'auto', 'none' or a list of distinct GPU "
            "indexes; got 'all'",
        ),
        (
            '[models.x]\nprovider = "llama"\npath = "/a"\nctx = 512\nvram = 4096\n',
            "helixd.toml: models.x.vram: unknown key; allowed keys here: aliases, args, ctx, "
            "gpu_layers, id, keep_alive, max_concurrency, max_queue, path, pinned, provider, "
            "ram_mib, refresh, sleep_mode, vram_mib",
        ),
        (
            "[resources]\ngpus = [0, 0]\n",
            "helixd.toml: resources.gpus: expected 'auto', 'none' or a list of distinct GPU "
            "indexes; got [0, 0]",
        ),
    ],
)
def test_model_mistakes_name_the_key_and_the_fix(tmp_path: Path, text: str, expected: str) -> None:
    assert _error(tmp_path, LLAMA + text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[routes.r]\ncandidates = ["ghost"]\n',
            "helixd.toml: routes.r.candidates: no model or alias 'ghost'; models: coder",
        ),
        (
            '[routes.coder]\ncandidates = ["coder"]\n',
            "helixd.toml: routes.coder: 'coder' is already a model or alias name",
        ),
        (
            '[routes.r]\ncandidates = ["coder"]\nrules = [{ match = "(", model = "coder" }]\n',
            "helixd.toml: routes.r.rules.0.match: expected a regular expression; missing ), "
            "unterminated subpattern at position 0 in '('",
        ),
        (
            '[routes.r]\ncandidates = ["coder"]\nstrategy = "random"\n',
            "helixd.toml: routes.r.strategy: expected one of fallback, least-busy, "
            "prefer-loaded; got 'random'",
        ),
        (
            '[proxy]\nlisten = "0.0.0.0:8000"\n',
            "helixd.toml: proxy: listen = '0.0.0.0:8000' is reachable from other hosts: set "
            "api_keys, or allow_unauthenticated = true if the network is trusted",
        ),
        (
            '[providers.cloud]\nkind = "remote"\nurl = "https://api.example.com/v1"\n',
            "helixd.toml: providers.cloud.url: expected the base URL without /v1 (helixd adds "
            "/v1/...); got 'https://api.example.com/v1'",
        ),
        (
            '[providers.other]\nkind = "openai"\ncommand = ["srv", "{model_path}"]\n'
            "daily_budget = 5\n",
            "helixd.toml: providers.other.daily_budget: only kind 'remote' takes it",
        ),
        (
            '[routes.r]\ncandidates = ["coder"]\n'
            'classifier = { model = "pm", labels = { math = "ghost" }, default = "coder" }\n',
            "helixd.toml: routes.r.classifier.model: no model or alias 'pm'; models: coder\n"
            "helixd.toml: routes.r.classifier.labels.math: no model or alias 'ghost'; "
            "models: coder",
        ),
        (
            '[proxy]\napi_keys = ["short"]\n',
            "helixd.toml: proxy.api_keys: expected keys of at least 16 characters without "
            "surrounding spaces, e.g. from 'openssl rand -hex 24'",
        ),
    ],
)
def test_route_and_proxy_mistakes_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    coder = '[models.coder]\nprovider = "llama"\npath = "/m.gguf"\nctx = 512\n'
    assert _error(tmp_path, LLAMA + coder + text) == expected


def test_a_file_far_too_big_for_a_config_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "helixd.toml"
    with path.open("wb") as file:  # sparse: no gigabyte written
        file.truncate(1024**3)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: larger than 4 MiB, which no config is; is this the right file?"
    )
