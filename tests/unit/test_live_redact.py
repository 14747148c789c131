"""Secrets never reach the page: log lines are masked before they are streamed."""

from __future__ import annotations

import pytest

from helixd.config import validate_config
from helixd.ui.redact import MASK, Redactor, config_secrets

KEY = "sk-local-0123456789abcdef"


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (f"started pid 7: llama-server --api-key {KEY} --port 8080", "--api-key ••••"),
        ("started pid 7: vllm serve m --api-key=abc123 --port 1", "--api-key=•••• --port 1"),
        ("HF_TOKEN=hf_abcdef other", "HF_TOKEN=•••• other"),
        ('{"password": "hunter2", "a": 1}', '"password": "••••", "a": 1'),
        ("Authorization: Bearer abc.def-ghi", "Bearer ••••"),
        (f"using {KEY} now", f"using {MASK} now"),
    ],
)
def test_secrets_are_masked(line: str, shown: str) -> None:
    text = Redactor([KEY])(line)
    assert shown in text
    assert KEY not in text and "hunter2" not in text and "abc123" not in text


@pytest.mark.parametrize(
    "line",
    [
        "llama_model_loader: key_length = 128",
        "prompt eval: 12 tokens per second",
        "n_tokens = 5, max_tokens: 200",
        "srv  log_server_r: request: POST /v1/chat/completions 127.0.0.1 200",
    ],
)
def test_ordinary_lines_are_left_alone(line: str) -> None:
    assert Redactor([KEY])(line) == line


def test_the_config_names_its_secrets() -> None:
    config = validate_config(
        {
            "proxy": {"api_keys": [KEY]},
            "providers": {
                "llama": {
                    "kind": "llamacpp",
                    "command": ["llama-server", "--port", "{port}"],
                    "env": {"HF_TOKEN": "hf_0123456789", "X": "1"},
                },
                "cloud": {"kind": "remote", "url": "https://api.example", "api_key_env": "K"},
            },
        },
        "test.toml",
    )
    found = config_secrets(config, {"K": "remote-secret-value"})
    assert {KEY, "hf_0123456789", "remote-secret-value"} <= found
    # Short values are not masked everywhere (a "1" would blank every digit).
    assert Redactor(found)("X is 1; hf_0123456789 and remote-secret-value") == (
        f"X is 1; {MASK} and {MASK}"
    )
