"""Process-per-model providers: loading a model starts its own server, unloading stops it.

Covers llama.cpp's ``llama-server``, llama-cpp-python's server, vLLM and any
OpenAI-compatible command. The provider's command is a template; each model's process
is supervised like any other (own process group, logs, health probe, group stop) but is
not restarted by the supervisor: when it dies the scheduler hears of it and decides.

Checked against the real llama-cpp-python 0.3.36 server (``python -m llama_cpp.server``,
which the end-to-end tests run with a tiny generated GGUF model: load, RAM measured from
its process, chat, eviction, a broken file's own error), and against llama.cpp's
``llama-server`` itself, built from the llama.cpp tree llama-cpp-python 0.3.36 vendors
(``make llama-server``; ``tests/e2e/test_llama_server_real.py``: 503 "Loading model" on
every endpoint until the model is loaded, which the start probe waits out; its own words
when a model does not load; a connection it ends after every streamed answer), which the
protocol fake ``tests/fakes/llama_server.py`` follows. Kind ``llamacpp`` serves both
without a health key: it probes ``/health`` and, once that answers 404 (llama-cpp-python's
server has none), ``/v1/models`` (see :mod:`helixd.kinds`). vLLM's specifics are in
:mod:`helixd.providers.vllm`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
from collections.abc import Sequence
from typing import Any

from helixd.config import DaemonPaths, ProviderConfig
from helixd.providers.base import LoadError, ModelAdapter, ModelTarget, says_out_of_memory
from helixd.supervisor.policy import describe_exit
from helixd.supervisor.process import ManagedProcess, ProcessState
from helixd.supervisor.registry import ChildRegistry
from helixd.supervisor.spec import ProcessSpec, build_spec

log = logging.getLogger("helixd.providers")

LOAD_LOG_TAIL = 20
_SERVING = frozenset({ProcessState.READY, ProcessState.UNHEALTHY})


# What a server says when it gives up: the first such line of its last words is the
# cause (llama-server follows "gguf_init_from_reader: invalid magic characters …" with
# several "failed to load model" lines and "exiting due to model loading error").
_TELLING = re.compile(r"error|failed|invalid|unable|cannot|not found|no such|out of memory", re.I)
# llama.cpp's log prefix: time since start and level ("0.00.006.346 E ").
_LLAMA_PREFIX = re.compile(r"^\d+\.\d+\.\d+\.\d+ ([A-Z]) ")


def telling_line(lines: Sequence[str]) -> str | None:
    """The line of a server's last words that says why it stopped; None if none does.

    llama.cpp's first error-level line when it marks levels, else the first line with
    words of failure; without llama.cpp's time-and-level prefix.
    """
    marked = [(m.group(1), line[m.end() :]) for line in lines if (m := _LLAMA_PREFIX.match(line))]
    said = next((text for level, text in marked if level == "E"), None)
    if said is None:
        said = next((line for line in lines if _TELLING.search(line)), None)
        said = _LLAMA_PREFIX.sub("", said) if said is not None else None
    return said.strip() if said is not None else None


# The variable each kind's server reads an API key from. helixd gives every start of a
# model's server a random key of its own and sends it, so a local user cannot reach the
# model's port around [proxy] api_keys. (llama-cpp-python's server, also kind
# "llamacpp", reads no such variable and stays open; so do kinds not named here.)
KEY_ENV = {"llamacpp": "LLAMA_API_KEY", "vllm": "VLLM_API_KEY"}


def process_name(provider: str, model: str) -> str:
    """``llama:qwen2.5-7b``: the model's process, in logs, status and the log file name."""
    return f"{provider}:{model}"


class ProcessPerModelAdapter(ModelAdapter):
    """One supervised process per loaded model."""

    shape = "process-per-model"

    def __init__(
        self,
        provider: str,
        config: ProviderConfig,
        paths: DaemonPaths,
        registry: ChildRegistry,
    ) -> None:
        super().__init__(provider)
        self.config = config
        self._paths = paths
        self._registry = registry
        self._processes: dict[str, ManagedProcess] = {}
        self._serving: set[str] = set()
        self._leaving: set[str] = set()
        # The latest process of each model, kept after it ends: its log explains a failure.
        self.last_process: dict[str, ManagedProcess] = {}
        self._upstream_ids: dict[str, str] = {}
        self._keys: dict[str, str] = {}  # model → the key its server was started with

    def spec_for(self, target: ModelTarget) -> ProcessSpec:
        """The process that serves ``target``: the template filled, placed on its GPU."""
        values = {
            "model": target.name,
            "model_id": target.model_id,
            "model_path": str(target.path) if target.path is not None else "",
            "ctx": str(target.ctx) if target.ctx is not None else "",
            "gpu_layers": str(target.gpu_layers),
            "gpu_memory_utilization": f"{target.gpu_memory_utilization:.2f}",
        }
        # CUDA numbers devices as NVML does only in PCI bus order; helixd's indexes are
        # NVML's, so pin the order before choosing one.
        env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        env["CUDA_VISIBLE_DEVICES"] = "" if target.gpu_index is None else str(target.gpu_index)
        key_env = KEY_ENV.get(self.config.kind)
        if key_env is not None:
            # A key the config sets itself is kept (it may be shared with other tools).
            key = self.config.env.get(key_env) or secrets.token_urlsafe(24)
            self._keys[target.name] = env[key_env] = key
        kind_args, kind_env = self.launch_extras(target)
        spec = build_spec(
            process_name(self.provider, target.name),
            self.config,
            self._paths,
            provider_name=self.provider,
            model_values=values,
            extra_args=(*kind_args, *target.args),
            extra_env={**kind_env, **env},
        )
        # The scheduler, not the supervisor, brings a dead model back (it must re-check
        # memory first); one failed start is a failed load. The process's note says so
        # rather than quote a start_retries = 0 or restart = never the config never said.
        one_run = (
            f"a model's server is started once per load, never restarted by the supervisor "
            f"(providers.{self.provider}.start_retries = {self.config.start_retries} and "
            f'restart = "{self.config.restart}" do not apply); '
            f"helixctl load {target.name} starts it again"
        )
        return dataclasses.replace(
            spec, restart="never", start_retries=0, autostart=False, one_run=one_run
        )

    def launch_extras(self, target: ModelTarget) -> tuple[tuple[str, ...], dict[str, str]]:
        """Arguments and environment a provider kind adds for this model (vLLM's sleep)."""
        return (), {}

    def _watched(self, model: str) -> bool:
        """Whether the death of the model's process is news (it was serving)."""
        return model in self._serving

    async def load(self, target: ModelTarget) -> None:
        """Start the model's process and wait until its health probe passes."""
        await self.unload(target.name)  # a leftover of an earlier attempt
        spec = self.spec_for(target)
        process = ManagedProcess(spec, self._registry, on_change=self._changed)
        self._processes[target.name] = process
        self.last_process[target.name] = process
        self._upstream_ids[target.name] = target.model_id
        await process.start()
        state = await process.wait_settled(spec.start_seconds + spec.stop_timeout_s + 5)
        if state == ProcessState.READY:
            self._serving.add(target.name)
            return
        tail = [line.text for line in process.sink.tail(LOAD_LOG_TAIL)]
        last_exit, detail = process.last_exit, ""
        if last_exit is not None and last_exit.reason == "start-timeout":
            # What the probes answered goes last: it ends with the fix.
            why = f"did not become ready within start_seconds ({spec.start_seconds:g} s)"
            detail = f": {last_exit.detail}" if last_exit.detail else ""
        elif last_exit is not None:
            why = describe_exit(last_exit)
            lines = process.sink.tail(LOAD_LOG_TAIL)
            own = [line.text for line in lines if line.stream != "helixd"]
            said = telling_line(own)  # the server's own words, after helixd's
            detail = f": {said}" if said else ""
        else:
            why = process.message or f"ended {state}"
        await self.unload(target.name)
        raise LoadError(
            f"{spec.name} {why} while loading{detail}; see helixctl logs {spec.name}",
            out_of_memory=says_out_of_memory(tail),
            log_tail=tail,
        )

    async def unload(self, model: str) -> None:
        """Stop the model's process group and wait until it is gone."""
        process = self._processes.get(model)
        if process is None:
            return
        self._leaving.add(model)
        self._serving.discard(model)
        try:
            await process.stop()
        finally:
            process.close()
            self._leaving.discard(model)
            if self._processes.get(model) is process:
                del self._processes[model]

    def upstream(self, model: str) -> str | None:
        """``http://127.0.0.1:PORT`` of the model's own server."""
        return self._address(model) if model in self._serving else None

    def _address(self, model: str) -> str | None:
        """The model's server address while its process exists (serving or not)."""
        process = self._processes.get(model)
        if process is None:
            return None
        return f"http://{process.spec.host}:{process.spec.port}"

    def upstream_model(self, model: str) -> str:
        """The model's id as its own server knows it (``id``, default: the name)."""
        return self._upstream_ids.get(model, model)

    def upstream_headers(self, model: str) -> dict[str, str]:
        """The model's key (see :data:`KEY_ENV`), and one connection per request to
        llama.cpp's server.

        llama-server closes the connection after a streamed answer although its headers
        promise keep-alive (no ``Connection: close``); a pooled connection reused after
        one fails the next request before it is sent (a retry, or a 502 under load). A
        fresh loopback connection per request costs a fraction of a millisecond (the warm
        overhead in ``bench/vs_llamacpp_router.py``).
        """
        headers = {"Connection": "close"} if self.config.kind == "llamacpp" else {}
        key = self._keys.get(model)
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"  # the key of this start only
        return headers

    def memory_pids(self, model: str) -> list[int]:
        """The model's server process (its tree holds the model's memory)."""
        process = self._processes.get(model)
        return [process.pid] if process is not None and process.pid is not None else []

    def log_process(self, model: str) -> ManagedProcess | None:
        """The model's latest process, running or not."""
        return self.last_process.get(model)

    def process_info(self, model: str) -> dict[str, Any] | None:
        """The supervisor's view of the model's process."""
        process = self._processes.get(model)
        return process.info() if process is not None else None

    def _process_lost(self, model: str) -> None:
        """Forget what a kind keeps of a model whose process died (vLLM: asleep)."""
        return None

    async def close(self) -> None:
        """Stop every model process of this provider."""
        for model in list(self._processes):
            await self.unload(model)

    def _changed(self, process: ManagedProcess) -> None:
        model = next((m for m, p in self._processes.items() if p is process), None)
        if model is None or model in self._leaving or not self._watched(model):
            return
        if process.state not in _SERVING:
            self._serving.discard(model)
            self._process_lost(model)
            why = process.message or f"its process is {process.state}"
            log.warning("%s: model %s lost: %s", self.provider, model, why)
            self._lost(model, why)
