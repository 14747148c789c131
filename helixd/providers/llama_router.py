"""llama.cpp's ``llama-server`` in router mode: one server, a child process per model.

Started without a model, ``llama-server`` is a router: it spawns one ``llama-server``
child per loaded model (on a port of its own) and forwards each request by its
``model`` field. helixd supervises the router like Ollama (kind ``llamacpp-router``) and
decides what is resident itself:

- the router runs with ``--models-max 0`` (no limit: its own LRU eviction never fires)
  and ``--no-models-autoload`` (a request never loads a model behind helixd's back), set
  through ``LLAMA_ARG_MODELS_MAX`` and ``LLAMA_ARG_MODELS_AUTOLOAD`` (see
  :mod:`helixd.kinds`); a router that says otherwise in ``GET /props`` is refused;
- its models come from a preset file helixd writes (``--models-preset``, through
  ``LLAMA_ARG_MODELS_PRESET``: ``STATE_DIR/NAME.models.ini``): one section per model,
  written at its load with the placement the scheduler chose (``device = none`` and no
  offload in host RAM, ``device = CUDA<i>`` on a GPU, with ``CUDA_DEVICE_ORDER`` pinned
  to NVML's numbering), then ``GET /models?reload=1``. Only the section of a model that
  is not running changes, so the reload never restarts a loaded one;
- load: ``POST /models/load {"model"}`` answers at once; the model's status in ``GET
  /models`` then goes ``loading`` → ``loaded``, or back to ``unloaded`` with ``failed``
  and the child's ``exit_code``. The child's output reaches the router's log prefixed
  with its port (``[ 8123] …``): a failed load quotes it;
- unload: ``POST /models/unload {"model"}``, then wait until the status leaves
  ``loading``/``loaded``/``sleeping`` (the child has exited);
- memory: each model's child process is found under the router by its ``--port`` and
  measured like a process-per-model server's tree;
- lost: the router leaving ``ready``, or a model no longer running in ``/models`` at
  the next check (every ``health.interval_s``), e.g. its child was killed.

Checked against the real ``llama-server`` built from the llama.cpp tree that
llama-cpp-python 0.3.36 vendors (``tests/tools/build_llama_server.sh``;
``tools/server/server-models.cpp``), which the end-to-end tests run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from helixd.providers.base import LoadError, ModelTarget, says_out_of_memory
from helixd.providers.http import error_text
from helixd.providers.one_server import OneServerAdapter
from helixd.providers.per_model import telling_line
from helixd.state import atomic_write_bytes

log = logging.getLogger("helixd.providers")

PRESET_ENV = "LLAMA_ARG_MODELS_PRESET"
# A model that is loading, loaded or asleep holds a child process (llama.cpp's is_running).
RUNNING = frozenset({"loading", "loaded", "sleeping"})
SERVING = frozenset({"loaded", "sleeping"})
POLL_S = 0.05
# How long the router's own log may lag behind its /models (helixd reads its output).
LOG_WAIT_S = 2.0
CHILD_LOG_LINES = 12


@dataclass(frozen=True)
class RouterModel:
    """One model as ``GET /models`` describes it."""

    status: str
    failed: bool = False
    exit_code: int | None = None
    port: int | None = None


def preset_options(target: ModelTarget) -> dict[str, str]:
    """The preset section that loads ``target`` where the scheduler placed it."""
    if target.path is None:
        raise LoadError(
            f"models.{target.name}.path: required for a llamacpp-router provider "
            "(the GGUF file the router's child loads), e.g. path = '/models/qwen2.5-7b.gguf'"
        )
    options = {"model": str(target.path)}
    if target.ctx is not None:
        options["ctx-size"] = str(target.ctx)
    if target.gpu_index is None:
        options["device"] = "none"
        options["n-gpu-layers"] = "0"
    else:
        options["device"] = f"CUDA{target.gpu_index}"
        options["n-gpu-layers"] = str(target.gpu_layers)
    options.update(args_as_options(target.args, target.name))
    options["load-on-startup"] = "false"
    return options


def args_as_options(args: Sequence[str], model: str) -> dict[str, str]:
    """A model's extra command-line ``args`` as preset keys (``--flag value`` → ``flag``)."""
    options: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not _is_option(arg):
            raise LoadError(
                f"models.{model}.args: {arg!r} follows no option; a llamacpp-router model "
                "takes options with their values, e.g. ['--temp', '0.2', '--jinja']"
            )
        key, _, value = arg.lstrip("-").partition("=")
        if not value and i + 1 < len(args) and not _is_option(args[i + 1]):
            value = args[i + 1]
            i += 1
        options[key] = value or "true"
        i += 1
    return options


def _is_option(arg: str) -> bool:
    return arg.startswith("-") and not re.fullmatch(r"-\d+(\.\d*)?", arg)


def render_preset(sections: Mapping[str, Mapping[str, str]]) -> str:
    """The preset file: llama.cpp's INI, a section per model id."""
    lines = [
        "; written by helixd: the models of this llama-server router, a section each,",
        "; rewritten at each load. Edit helixd's config, not this file.",
        "version = 1",
    ]
    for model_id, options in sorted(sections.items()):
        lines += ["", f"[{model_id}]", *(f"{key} = {value}" for key, value in options.items())]
    return "\n".join(lines) + "\n"


def preset_path(argv: Sequence[str], env: Mapping[str, str]) -> Path | None:
    """Where the router reads its presets: ``--models-preset`` wins over the environment."""
    for i, arg in enumerate(argv):
        if arg == "--models-preset" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--models-preset="):
            return Path(arg.partition("=")[2])
    value = env.get(PRESET_ENV)
    return Path(value) if value else None


def router_models(listing: Any) -> dict[str, RouterModel]:
    """``GET /models`` → each model id's status, failure and child port."""
    data = listing.get("data") if isinstance(listing, dict) else None
    found: dict[str, RouterModel] = {}
    for card in data or []:
        if not isinstance(card, dict) or not isinstance(card.get("id"), str):
            continue
        status = card.get("status")
        if not isinstance(status, dict):
            continue
        code = status.get("exit_code")
        found[card["id"]] = RouterModel(
            status=str(status.get("value", "")),
            failed=bool(status.get("failed")),
            exit_code=code if isinstance(code, int) else None,
            port=_port_of(status.get("args")),
        )
    return found


def _port_of(args: Any) -> int | None:
    if not isinstance(args, list):
        return None
    for flag, value in itertools.pairwise(args):
        if flag == "--port" and isinstance(value, str) and value.isdigit():
            return int(value)
    return None


def child_lines(lines: Sequence[str], port: int) -> list[str]:
    """The lines a child wrote, as the router forwards them (``[ 8123] text``)."""
    prefix = f"[{port:5d}] "
    return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


def router_problem(props: Any, provider: str) -> str | None:
    """Why a router's own scheduling would fight helixd's (``GET /props``), if it would."""
    if not isinstance(props, dict) or props.get("role") != "router":
        return (
            f"{provider} is not a llama-server router (GET /props has no role = router); "
            f"its command must not load a model itself: remove -m/--model from "
            f"providers.{provider}.command"
        )
    fixes = []
    if props.get("max_instances") not in (0, None):
        fixes.append(f"it evicts on its own past --models-max {props.get('max_instances')}")
    if props.get("models_autoload"):
        fixes.append("it loads models on its own (models autoload)")
    if not fixes:
        return None
    return (
        f"{provider}: {' and '.join(fixes)}, so two schedulers would fight; remove "
        f"--models-max/--models-autoload from providers.{provider}.command and "
        "LLAMA_ARG_MODELS_MAX/LLAMA_ARG_MODELS_AUTOLOAD from its env (helixd sets them)"
    )


class LlamaRouterAdapter(OneServerAdapter):
    """The models of one supervised ``llama-server`` router."""

    loaded_list = "/models"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every section written so far: a running model's stays as it was loaded, so a
        # reload of the file never restarts it.
        self._sections: dict[str, dict[str, str]] = {}
        self._ports: dict[str, int] = {}
        self._pids: dict[str, list[int]] = {}
        self._checked_pid: int | None = None

    # -- the preset file -----------------------------------------------------------------

    def preset_file(self) -> Path:
        """The preset file the router reads; :class:`LoadError` when it names none."""
        process = self._server()
        path = None
        if process is not None:
            path = preset_path(process.spec.argv, dict(process.spec.env))
        if path is None:
            raise LoadError(
                f"providers.{self.provider}: its llama-server has no --models-preset (nor "
                f"{PRESET_ENV}) for helixd to write its models to; leave both to helixd"
            )
        return path

    def ensure_preset(self) -> None:
        """Write an empty preset file if there is none: the router refuses to start without
        the file it was given. An existing one is left alone (it may list running models)."""
        try:
            path = self.preset_file()
        except LoadError:
            return  # the first load says why
        if not path.exists():
            with contextlib.suppress(OSError):  # the router's start says why
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, render_preset({}).encode(), mode=0o644)

    async def _place(self, base: str, target: ModelTarget) -> None:
        """Write the target's section where the scheduler placed it; have the router re-read."""
        options = preset_options(target)
        if self._sections.get(target.model_id) == options:
            return
        self._sections[target.model_id] = options
        path = self.preset_file()
        try:
            await asyncio.to_thread(
                atomic_write_bytes, path, render_preset(self._sections).encode(), 0o644
            )
        except OSError as exc:
            del self._sections[target.model_id]
            raise LoadError(f"{self.provider}: cannot write {path}: {exc.strerror}") from None
        status, text = await self.http.call("GET", base + "/models?reload=1", timeout=60.0)
        if status != 200:
            raise LoadError(
                f"{self.provider} did not re-read {path}: HTTP {status}: {error_text(text)}"
            )

    # -- the router's API ----------------------------------------------------------------

    async def listing(self, base: str) -> dict[str, RouterModel]:
        """``GET /models``, by model id."""
        return router_models(await self.http.get_json(base + "/models"))

    async def loaded_ids(self, base: str) -> set[str]:
        """Models the router runs a child for (loading, loaded or asleep)."""
        return {m for m, info in (await self.listing(base)).items() if info.status in RUNNING}

    async def _check_router(self, base: str) -> None:
        """Once per router process: it must leave residency to helixd."""
        pid = self._server_pid()
        if pid is not None and pid == self._checked_pid:
            return
        problem = router_problem(await self.http.get_json(base + "/props"), self.provider)
        if problem is not None:
            raise LoadError(problem)
        self._checked_pid = pid

    async def _load_on(self, base: str, target: ModelTarget) -> None:
        """Place, ask the router to load, then wait for its child to be ready or gone."""
        await self._check_router(base)
        await self._place(base, target)
        model_id = target.model_id
        status, text = await self.http.call("POST", base + "/models/load", body={"model": model_id})
        message = error_text(text)
        if status == 404:
            raise LoadError(
                f"{self.provider} has no model {model_id!r} after re-reading its presets "
                f"({message}); see helixctl logs {self.provider}"
            )
        if status != 200 and "already running" not in message:
            raise self._load_failed(model_id, f"HTTP {status}: {message}")
        await self._until_loaded(base, target)

    async def _until_loaded(self, base: str, target: ModelTarget) -> None:
        loop = asyncio.get_running_loop()
        wait_s = self.config.start_seconds
        deadline = loop.time() + wait_s
        model_id = target.model_id
        while True:
            info = (await self.listing(base)).get(model_id)
            if info is None:
                raise LoadError(f"{self.provider} no longer lists {model_id!r} in /models")
            if info.status in SERVING:
                if info.port is not None:
                    self._ports[target.name] = info.port
                    self._pids[target.name] = self._child_pids(info.port)
                return
            if info.status not in RUNNING:
                raise await self._child_failed(target, info)
            if loop.time() > deadline:
                raise LoadError(
                    f"{self.provider}: {model_id} did not load within start_seconds "
                    f"({wait_s:g} s); raise providers.{self.provider}.start_seconds if it is "
                    f"only slow; see helixctl logs {self.provider}"
                )
            await asyncio.sleep(POLL_S)  # a poll interval; the deadline bounds the wait

    async def _child_failed(self, target: ModelTarget, info: RouterModel) -> LoadError:
        """The child exited while loading: its own last words, from the router's log."""
        model_id = target.model_id
        exited = f"instance name={model_id} exited with status"
        process = self._server()
        lines: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOG_WAIT_S
        while process is not None:
            texts = [line.text for line in process.sink.tail(400)]
            lines = child_lines(texts, info.port) if info.port is not None else []
            if any(exited in text for text in texts) or loop.time() > deadline:
                break
            await asyncio.sleep(POLL_S)  # the router's output is on its way
        tail = lines[-CHILD_LOG_LINES:]
        how = f"exited with code {info.exit_code}" if info.exit_code else "exited"
        said = telling_line(tail)
        return LoadError(
            f"{self.provider}: the llama-server child of {model_id} {how} while loading"
            + (f": {said}" if said else "")
            + f"; see helixctl logs {self.provider}",
            out_of_memory=says_out_of_memory(tail),
            log_tail=tail,
        )

    def _child_pids(self, port: int) -> list[int]:
        """The router's child serving on ``port`` (its tree holds the model's memory)."""
        pid = self._server_pid()
        if pid is None:
            return []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children():
                with contextlib.suppress(psutil.Error):
                    if str(port) in _port_args(child.cmdline()):
                        return [child.pid]
        return []

    async def _unload_on(self, base: str, model_id: str) -> None:
        """``POST /models/unload`` (an error when it is not running: the wait then ends)."""
        with contextlib.suppress(LoadError):  # the wait that follows tells
            await self.http.call("POST", base + "/models/unload", body={"model": model_id})

    def _forget(self, model: str) -> None:
        super()._forget(model)
        self._ports.pop(model, None)
        self._pids.pop(model, None)

    def memory_pids(self, model: str) -> list[int]:
        """The model's child process."""
        return list(self._pids.get(model, []))


def _port_args(cmdline: Sequence[str]) -> list[str]:
    return [value for flag, value in itertools.pairwise(cmdline) if flag == "--port"]
