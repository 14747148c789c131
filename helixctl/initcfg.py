"""``helixctl init``: a first config for the providers found on this host.

Always the built-in echo provider (so helixd has something to supervise and the endpoint
something to answer); Ollama as a supervised server when ``ollama`` is on PATH; vLLM and
llama-server as commented templates, because they run one process per model and need a
model to be named first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

HEADER = """\
# helixd configuration, written by 'helixctl init'.
# Every key is documented in etc/helixd.toml of the helixd sources.
# Check it with 'helixctl config check'; apply changes with 'helixctl reload'.

[providers.echo]
# Built-in OpenAI/Ollama-compatible echo server: a demo and smoke test, not a model.
kind = "echo"
"""

OLLAMA = """
[providers.ollama]
# Found {path}. helixd starts 'ollama serve' on its own port and decides model lifetimes.
kind = "ollama"
command = ["{path}", "serve"]
port = "auto"
restart = "on-failure"
"""

LLAMACPP = """
# Found {path}. llama-server runs one process per model; name a model to use it:
# [providers.llama]
# kind = "llamacpp"
# command = ["{path}", "-m", "{{model_path}}", "--host", "{{host}}", "--port", "{{port}}"]
"""

VLLM = """
# Found {path}. vLLM runs one process per model; name a model to use it:
# [providers.vllm]
# kind = "vllm"
# command = ["{path}", "serve", "{{model}}", "--host", "{{host}}", "--port", "{{port}}"]
"""


def render_initial_config() -> tuple[str, list[str]]:
    """The config text, and the names of the providers it found."""
    text, found = HEADER, ["echo"]
    for binary, template, name in (
        ("ollama", OLLAMA, "ollama"),
        ("llama-server", LLAMACPP, "llama-server (template)"),
        ("vllm", VLLM, "vllm (template)"),
    ):
        path = shutil.which(binary)
        if path:
            text += template.format(path=path)
            found.append(name)
    return text, found


def write_initial_config(
    output: Path | None, mode: str | None, force: bool
) -> tuple[Path, list[str]]:
    """Write the config atomically; refuse to overwrite unless ``force``."""
    from helixd.config import default_config_path, validate_config
    from helixd.paths import parse_mode
    from helixd.state import atomic_write_bytes

    path = output or default_config_path(parse_mode(mode))
    if path.exists() and not force:
        raise FileExistsError(str(path))
    text, found = render_initial_config()
    import tomllib

    validate_config(tomllib.loads(text), path.name)  # never write a config helixd would refuse
    atomic_write_bytes(path, text.encode(), mode=0o644)
    return path, found
