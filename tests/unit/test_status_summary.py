"""The one-line summary counts every configured provider, as ``config check`` does."""

from __future__ import annotations

from helixd.config import ProviderConfig
from helixd.overview import summary_line


def provider(kind: str, **keys: object) -> ProviderConfig:
    return ProviderConfig.model_validate({"kind": kind, **keys})


def test_per_model_and_remote_providers_are_counted_by_what_they_are() -> None:
    providers = {
        "ollama": provider("ollama"),
        "llama": provider("llamacpp", command=["llama-server", "-m", "{model_path}"]),
        "cloud": provider("remote", url="http://10.0.0.5:8000"),
    }
    line = summary_line(providers, {"ollama": "ready"}, {"loaded": 1, "unloaded": 2})
    assert line == "3 providers: 1 ready, 1 per model, 1 remote; models: 1 loaded, 2 unloaded"


def test_nothing_configured() -> None:
    assert summary_line({}, {}, {}) == "no providers configured"
    assert summary_line({"e": provider("echo")}, {"e": "backoff"}, {}) == "1 provider: 1 backoff"
