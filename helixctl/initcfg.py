"""``helixctl init``: a first config for the providers and models found on this host.

Looks for Ollama, llama.cpp's ``llama-server`` (or llama-cpp-python's server), vLLM and
LocalAI on PATH or importable by the user's ``python3``, asks a running Ollama for its
installed models (``/api/tags``), and finds GGUF files in the usual model folders.
Always adds a demo model served by the built-in echo server, so the endpoint answers
from the first run. Tables are written with tomli-w; each section gets a comment saying
where it came from and what to edit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Where people keep GGUF files; searched two levels deep (Hugging Face's cache deeper).
MODEL_DIRS = (
    "~/models",
    "~/.cache/llama.cpp",
    "~/.local/share/models",
    "/models",
    "/opt/models",
    "/srv/models",
    "/var/lib/models",
)
HF_CACHE = "~/.cache/huggingface/hub"
MAX_GGUF = 20
DEFAULT_CTX = 4096
_SPLIT_PART = re.compile(r"-0*([2-9]|\d{2,})-of-\d+\.gguf$")  # later parts of a split GGUF
# The demo model every first config has: the echo server, one process per model.
DEMO_MODEL = "echo-demo"
DEMO_COMMAND = (
    "{python}",
    "-m",
    "helixd.providers.echo",
    "--host",
    "{host}",
    "--port",
    "{port}",
    "--model",
    "{model}",
)
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._:-]+")


@dataclass
class Findings:
    """What is on this host."""

    ollama: str | None = None  # the ollama binary
    ollama_running: str | None = None  # URL of an Ollama that answered
    ollama_models: list[str] = field(default_factory=list)
    llama_server: list[str] | None = None  # command prefix that serves a GGUF
    vllm: str | None = None
    localai: str | None = None
    ggufs: list[Path] = field(default_factory=list)

    def summary(self) -> list[str]:
        """One line per thing found, for the user."""
        lines = []
        if self.ollama:
            lines.append(f"ollama: {self.ollama}")
        if self.ollama_running:
            models = ", ".join(self.ollama_models) or "no models"
            lines.append(f"a running Ollama at {self.ollama_running} ({models})")
        if self.llama_server:
            lines.append(f"llama.cpp server: {' '.join(self.llama_server[:3])}")
        if self.vllm:
            lines.append(f"vllm: {self.vllm}")
        if self.localai:
            lines.append(f"local-ai: {self.localai}")
        if self.ggufs:
            lines.append(f"{len(self.ggufs)} GGUF file(s), e.g. {self.ggufs[0]}")
        return lines


def detect(model_dirs: list[Path] | None = None) -> Findings:
    """Look around this host (quickly: one local HTTP probe, bounded directory walks)."""
    found = Findings(ollama=shutil.which("ollama"), vllm=shutil.which("vllm"))
    found.localai = shutil.which("local-ai")
    server = shutil.which("llama-server")
    python, python_modules = "python3", set[str]()
    if server is None or found.vllm is None:
        python, python_modules = user_python_with(("llama_cpp.server", "vllm"))
    if server:
        found.llama_server = [server, "-m", "{model_path}"]
    elif "llama_cpp.server" in python_modules:
        found.llama_server = [python, "-m", "llama_cpp.server", "--model", "{model_path}"]
    if found.vllm is None and "vllm" in python_modules:
        found.vllm = f"{python} -m vllm.entrypoints.cli.main"
    found.ollama_running, found.ollama_models = _running_ollama()
    dirs = model_dirs if model_dirs is not None else [Path(d).expanduser() for d in MODEL_DIRS]
    found.ggufs = _find_ggufs(dirs, Path(HF_CACHE).expanduser())
    return found


def user_python_with(modules: tuple[str, ...]) -> tuple[str, set[str]]:
    """The user's ``python3`` on PATH, and which of ``modules`` it can import.

    helixd's own interpreter is left out on purpose: its environment holds what helixd
    (and, after ``make test``, its test suite) needs, such as llama-cpp-python, and a
    provider found there would be one the user never installed.
    """
    own_bin = Path(sys.prefix) / "bin"
    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d) != own_bin
    )
    python = shutil.which("python3", path=path)
    if python is None:
        return "python3", set()
    probe = (
        "import importlib.util, sys\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        found = importlib.util.find_spec(name) is not None\n"
        "    except ImportError:\n"
        "        found = False\n"
        "    if found:\n"
        "        print(name)\n"
    )
    try:
        done = subprocess.run(
            [python, "-c", probe, *modules], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.SubprocessError):
        return python, set()
    return python, set(done.stdout[:4096].split()) & set(modules)


def _running_ollama() -> tuple[str | None, list[str]]:
    host = os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434"
    url = host if host.startswith("http") else f"http://{host}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.rstrip("/") + "/api/tags", timeout=1.5) as response:
            data = json.load(response)
    except (OSError, ValueError):
        return None, []
    listed = data.get("models") if isinstance(data, dict) else None
    models = [m.get("name") for m in listed or [] if isinstance(m, dict)]
    return url.rstrip("/"), [m for m in models if isinstance(m, str)]


def _find_ggufs(dirs: list[Path], hf_cache: Path) -> list[Path]:
    found: list[Path] = []
    patterns: list[tuple[Path, tuple[str, ...]]] = [(d, ("*.gguf", "*/*.gguf")) for d in dirs]
    patterns.append((hf_cache, ("*/snapshots/*/*.gguf",)))
    for folder, globs in patterns:
        if not folder.is_dir():
            continue
        for pattern in globs:
            for path in sorted(folder.glob(pattern)):
                if not _SPLIT_PART.search(path.name) and path.is_file():
                    found.append(path)
                if len(found) >= MAX_GGUF:
                    return found
    return found


def model_name(raw: str, taken: set[str]) -> str:
    """A config-safe model name (letters, digits, '.', '_', ':', '-'), unique."""
    name = _NAME_CHARS.sub("-", raw).strip("-._:") or "model"
    if not name[0].isalnum():
        name = "m" + name
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}-{n}", n + 1
    taken.add(unique)
    return unique


def render_initial_config(found: Findings) -> tuple[str, list[str]]:
    """The config text, and what the user should edit next."""
    import tomli_w

    sections: list[str] = [
        "# helixd configuration, written by 'helixctl init'.\n"
        "# Every key is documented in etc/helixd.toml of the helixd sources.\n"
        "# Check it with 'helixctl config check'; apply changes with 'helixctl reload'.\n"
    ]
    todo: list[str] = []
    taken: set[str] = set()

    def table(comment: str, data: dict[str, Any]) -> None:
        lines = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
        sections.append(lines + tomli_w.dumps(data))

    table(
        "A demo model, so the endpoint answers from the first run: helixd's built-in echo\n"
        "server, which replies with what it was sent ('echo: ...'). It is not a language\n"
        "model; delete these two tables once you have real models. Try it:\n"
        "  curl -s localhost:11400/v1/chat/completions -H 'content-type: application/json' \\\n"
        f'    -d \'{{"model":"{DEMO_MODEL}","messages":[{{"role":"user",'
        '"content":"hello"}]}\'',
        {
            "providers": {"demo": {"kind": "openai", "command": list(DEMO_COMMAND)}},
            "models": {DEMO_MODEL: {"provider": "demo"}},
        },
    )
    taken.add(DEMO_MODEL)
    _ollama_sections(found, table, todo, taken)
    if found.llama_server:
        command = [
            *found.llama_server,
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--n_ctx" if "llama_cpp.server" in found.llama_server else "-c",
            "{ctx}",
        ]
        table(
            "llama.cpp: one server process per model (the command is a template).",
            {
                "providers": {
                    "llama": {
                        "kind": "llamacpp",
                        # no health key: the kind probes /health, then /v1/models
                        # where that is 404 (llama-cpp-python's server)
                        "command": command,
                    }
                }
            },
        )
        for path in found.ggufs:
            name = model_name(path.stem.lower(), taken)
            table(
                f"Found {path}. Set ctx to what you need; vram_mib if the estimate is off.",
                {"models": {name: {"provider": "llama", "path": str(path), "ctx": DEFAULT_CTX}}},
            )
        if not found.ggufs:
            todo.append('add [models.NAME] with provider = "llama" and the path of a GGUF file')
    elif found.ggufs:
        todo.append(
            f"{len(found.ggufs)} GGUF file(s) found but no llama.cpp server: install "
            "llama-server (or pip install 'llama-cpp-python[server]') to serve them"
        )
    if found.vllm:
        sections.append(
            f"# Found {found.vllm}. vLLM runs one process per model; name a model to use it:\n"
            '# [providers.vllm]\n# kind = "vllm"\n'
            '# command = ["vllm", "serve", "{model_id}", "--served-model-name", '
            '"{model}", "--host", "{host}", "--port", "{port}", '
            '"--gpu-memory-utilization", "{gpu_memory_utilization}"]\n'
            '# [models.NAME]\n# provider = "vllm"\n# id = "Qwen/Qwen2.5-7B-Instruct"\n'
            "# vram_mib = 12000       # its share of the card\n"
            "# sleep_mode = true      # unload = sleep (weights to RAM), load = wake\n"
        )
    if found.localai:
        sections.append(
            f"# Found {found.localai}. helixd runs one 'local-ai run' and loads its models\n"
            "# through its API (LocalAI's own watchdogs and LRU off); to use it:\n"
            '# [providers.localai]\n# kind = "localai"\n'
            '# env = { LOCALAI_MODELS_PATH = "/path/to/localai/models" }\n'
            '# [models.NAME]\n# provider = "localai"\n# id = "the name of its model config"\n'
        )
    return "\n".join(sections), todo


def _ollama_sections(found: Findings, table: Any, todo: list[str], taken: set[str]) -> None:
    if found.ollama:
        note = (
            f"Found {found.ollama}. helixd runs 'ollama serve' on its own port and decides "
            "model lifetimes."
        )
        if found.ollama_running:
            note += (
                f"\nAn Ollama already runs at {found.ollama_running}: stop its own service "
                "(e.g. systemctl disable --now ollama)\nso that only helixd's uses the GPU."
            )
            todo.append(f"stop the Ollama already running at {found.ollama_running}")
        table(
            note,
            {
                "providers": {
                    "ollama": {
                        "kind": "ollama",
                        "command": [found.ollama, "serve"],
                        "port": "auto",
                        "restart": "on-failure",
                    }
                }
            },
        )
        provider = "ollama"
    elif found.ollama_running:
        table(
            f"An Ollama answers at {found.ollama_running} but is not on PATH: used as a remote\n"
            "(its models are not loaded or unloaded by helixd).",
            {"providers": {"ollama": {"kind": "remote", "url": found.ollama_running}}},
        )
        provider = "ollama"
    else:
        return
    for raw in found.ollama_models:
        name = model_name(raw, taken)
        entry = {"provider": provider} | ({"id": raw} if name != raw else {})
        table(f"Installed in Ollama: {raw}.", {"models": {name: entry}})
    if not found.ollama_models:
        todo.append("pull a model into Ollama (helixctl pull qwen2.5:7b) and add [models.NAME]")


def write_initial_config(
    output: Path | None, mode: str | None, force: bool, model_dirs: list[Path] | None = None
) -> tuple[Path, list[str], list[str]]:
    """Write the config atomically; refuse to overwrite unless ``force``.

    Returns the path, what was found, and what to edit next.
    """
    import tomllib

    from helixd.config import default_config_path, validate_config
    from helixd.paths import parse_mode
    from helixd.state import atomic_write_bytes

    path = output or default_config_path(parse_mode(mode))
    if path.exists() and not force:
        raise FileExistsError(str(path))
    found = detect(model_dirs)
    text, todo = render_initial_config(found)
    validate_config(tomllib.loads(text), path.name)  # never write a config helixd would refuse
    atomic_write_bytes(path, text.encode(), mode=0o644)
    return path, [f"{DEMO_MODEL} (the built-in demo model)", *found.summary()], todo
