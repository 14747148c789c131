"""LiteLLM's proxy, unchanged, in front of two helixd hosts, with the config helixctl writes.

Two real helixd daemons on loopback (each its own port, models on the echo provider
behind an API key), ``helixctl export litellm --host`` for the second, and the real
``litellm`` from PyPI (its own virtualenv, built once per version by
tests/tools/litellm_venv.sh) started with that file as it is. Which host answered is
read from LiteLLM's ``x-litellm-model-api-base`` header and confirmed by each helixd's
access log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import yaml

from helixctl.export import COOLDOWN_S, LITELLM_VERSION
from helixd.supervisor.spec import free_port
from tests.conftest import wait_for_sync
from tests.e2e.conftest import BIN, Helix
from tests.e2e.test_proxy import echo_models

ROOT = Path(__file__).resolve().parents[2]
VENV_SCRIPT = ROOT / "tests" / "tools" / "litellm_venv.sh"
HELIXD_KEY = "helixd-gateway-test-key-0123456789"
MASTER_KEY = "sk-helixd-gateway-test-0123456789abcdef"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# LiteLLM fetches its cost map and a few other files from GitHub at start unless told
# to use the copies it ships; the tests reach nothing beyond loopback.
OFFLINE = {
    name: "True"
    for name in (
        "LITELLM_LOCAL_MODEL_COST_MAP",
        "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",
        "LITELLM_LOCAL_BLOG_POSTS",
        "LITELLM_LOCAL_POLICY_TEMPLATES",
        "LITELLM_LOCAL_AUTOROUTER_PRESETS",
    )
}
WORKERS = 4


@pytest.fixture(scope="session")
def litellm_program() -> Path:
    """The ``litellm`` of LiteLLM's own venv; built here only where real providers are due."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    built = cache / "helixd" / f"litellm-{LITELLM_VERSION}" / ".helixd-complete"
    if os.environ.get("HELIXD_TEST_REAL_PROVIDERS") != "1" and not built.exists():
        pytest.skip(f"LiteLLM {LITELLM_VERSION} is not installed; {VENV_SCRIPT} installs it")
    result = subprocess.run(
        [str(VENV_SCRIPT), LITELLM_VERSION], capture_output=True, text=True, timeout=1200
    )
    if result.returncode != 0:
        pytest.fail(f"{VENV_SCRIPT} failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1]) / "bin" / "litellm"


def host_a() -> str:
    return echo_models("shared", aliases=["common"], max_concurrency=4) + (
        '\n[models.only-a]\nprovider = "echo"\nmax_concurrency = 2\n'
    )


def host_b() -> str:
    return (
        echo_models("shared", aliases=["common"], max_concurrency=4)
        + '\n[models.only-b]\nprovider = "echo"\nmax_concurrency = 2\n'
        + '\n[routes.coding]\ncandidates = ["only-b", "shared"]\n'
    )


@dataclass
class Answer:
    status: int
    host: str  # the api_base LiteLLM used, "" when it did not say
    headers: dict[str, str]
    body: Any
    started: float
    seconds: float


class Gateway:
    """The two helixd hosts and the LiteLLM proxy in front of them."""

    def __init__(self, root: Path, a: Helix, b: Helix, program: Path) -> None:
        self.root, self.a, self.b, self.program = root, a, b, program
        self.config_file = root / "litellm.yaml"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "litellm.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(a.env, HELIXD_KEY=HELIXD_KEY)

    def export(self, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = ["export", "litellm", "--host", self.b.proxy_url, "--key-env", "HELIXD_KEY"]
        return subprocess.run(
            [str(BIN / "helixctl"), *argv, *extra],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        }
        env.update(OFFLINE, HELIXD_KEY=HELIXD_KEY, LITELLM_MASTER_KEY=MASTER_KEY)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        argv = [str(self.program), "--config", str(self.config_file)]
        argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "ab") as log:
            # cwd: LiteLLM reads a .env from its working directory; give it an empty one.
            self.proc = subprocess.Popen(
                argv,
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_sync(self._ready, timeout=180, what="LiteLLM's proxy to answer")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"litellm exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with OPENER.open(self.url + "/health/readiness", timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Answer:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data,
            {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"},
            method=method,
        )
        started = time.monotonic()
        try:
            with OPENER.open(request, timeout=timeout) as response:
                status, headers, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            status, headers, raw = exc.code, dict(exc.headers), exc.read()
        except (urllib.error.URLError, OSError) as exc:
            status, headers, raw = 0, {}, str(exc).encode()
        headers = {k.lower(): v for k, v in headers.items()}
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        host = headers.get("x-litellm-model-api-base", "").removesuffix("/v1")
        return Answer(status, host, headers, parsed, started, time.monotonic() - started)

    def chat(self, model: str, text: str) -> Answer:
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        return self.call("POST", "/v1/chat/completions", body)


def helixd_get(url: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {HELIXD_KEY}"})
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def probe(url: str, model: str) -> tuple[int, Any]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    headers = {"Authorization": f"Bearer {HELIXD_KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, body.encode(), headers)
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def served(h: Helix, model: str) -> int:
    """How many requests for ``model`` the helixd's access log shows."""
    return h.stderr().count(f"asked={model} ")


def states(h: Helix) -> dict[str, str]:
    result = h.ctl("--json", "models")
    assert result.returncode == 0, result.stderr
    return {m["name"]: m["state"] for m in json.loads(result.stdout)["models"]}


@pytest.fixture(scope="module")
def gateway(litellm_program: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("gateway")
    hosts = []
    for name, text in (("a", host_a()), ("b", host_b())):
        (root / name).mkdir()
        h = Helix(root / name, text, f'api_keys = ["{HELIXD_KEY}"]')
        hosts.append(h)
    g = Gateway(root, hosts[0], hosts[1], litellm_program)
    try:
        for h in hosts:
            h.start()
        written = g.export("-o", str(g.config_file))
        assert written.returncode == 0, written.stderr
        g.start()
        yield g
    finally:
        g.stop()
        for h in hosts:
            if h.proc is not None and h.proc.poll() is None:
                h.stop()


def test_the_exported_config_is_the_same_in_yaml_and_json_and_holds_no_key(
    gateway: Gateway,
) -> None:
    as_json = gateway.export("--json")
    assert as_json.returncode == 0, as_json.stderr
    text = gateway.config_file.read_text()
    assert yaml.safe_load(text) == json.loads(as_json.stdout)
    assert HELIXD_KEY not in text and MASTER_KEY not in text
    assert "os.environ/HELIXD_KEY" in text
    config = yaml.safe_load(text)
    names = sorted(d["model_name"] for d in config["model_list"])
    assert names == ["coding", "only-a", "only-b", "shared", "shared"]
    assert config["router_settings"]["model_group_alias"] == {"common": "shared"}
    assert config["router_settings"]["fallbacks"] == [{"coding": ["only-b", "shared"]}]
    # The test harness shows the file when the test runs with -s.
    print(f"\n--- {gateway.config_file}\n{text}")


def test_litellm_health_checks_reach_every_deployment_and_load_nothing(gateway: Gateway) -> None:
    checked = gateway.call("GET", "/health", timeout=120)
    assert checked.status == 200, checked.body
    assert checked.body["healthy_count"] == 5, checked.body
    assert checked.body["unhealthy_count"] == 0, checked.body
    for h in (gateway.a, gateway.b):
        assert set(states(h).values()) == {"unloaded"}, states(h)
    # What the probes asked, asked directly: ready (loadable) but not loaded.
    b = gateway.b.proxy_url
    assert helixd_get(b + "/health") == (200, {"status": "ok", "version": ANY, "models": ANY})
    assert helixd_get(b + "/health/models/coding") == (
        200,
        {"id": "coding", "readiness": "loadable"},
    )
    assert probe(b + "/health/ready/v1/chat/completions", "only-b")[0] == 200
    status, body = probe(b + "/health/loaded/v1/chat/completions", "only-b")
    assert status == 503 and "only-b is loadable" in body["error"]["message"]
    assert set(states(gateway.b).values()) == {"unloaded"}


def test_requests_through_litellm_reach_both_hosts_and_load_on_demand(gateway: Gateway) -> None:
    a, b = gateway.a.proxy_url, gateway.b.proxy_url
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while seen != {a, b} and time.monotonic() < deadline:
        answer = gateway.chat("shared", f"hello {len(seen)}")
        assert answer.status == 200, answer.body
        assert answer.body["choices"][0]["message"]["content"].startswith("echo: hello")
        assert answer.headers["llm_provider-x-helix-model"] == "shared"
        seen.add(answer.host)
    assert seen == {a, b}
    assert served(gateway.a, "shared") >= 1 and served(gateway.b, "shared") >= 1
    # A model only one host has goes there, and is loaded there on demand.
    assert states(gateway.b)["only-b"] == "unloaded"
    only_b = gateway.chat("only-b", "load me")
    assert (only_b.status, only_b.host) == (200, b), only_b.body
    assert states(gateway.b)["only-b"] == "loaded"
    only_a = gateway.chat("only-a", "and me")
    assert (only_a.status, only_a.host) == (200, a), only_a.body
    assert states(gateway.a)["only-a"] == "loaded"
    # An alias both hosts agree on, and the route of host b (helixd picks within it).
    alias = gateway.chat("common", "by alias")
    assert alias.status == 200 and alias.headers["llm_provider-x-helix-model"] == "shared"
    route = gateway.chat("coding", "by route")
    assert (route.status, route.host) == (200, b), route.body
    assert route.headers["llm_provider-x-helix-route"] == "coding"
    assert route.headers["llm_provider-x-helix-model"] == "only-b"


def test_a_model_on_both_hosts_keeps_being_served_when_one_helixd_stops(
    gateway: Gateway, record_property: Any
) -> None:
    a, b = gateway.a.proxy_url, gateway.b.proxy_url
    for h in (gateway.a, gateway.b):
        assert h.ctl("load", "shared").returncode == 0
    answers: list[Answer] = []
    lock = threading.Lock()
    stop_at: list[float] = []
    end = threading.Event()

    def worker(n: int) -> None:
        i = 0
        while not end.is_set():
            answer = gateway.chat("shared", f"w{n} r{i}")
            with lock:
                answers.append(answer)
            i += 1
            end.wait(0.02)  # a steady stream, not a flood, on a small shared machine

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    for t in threads:
        t.start()
    try:
        # Both hosts answer under load, then b's helixd stops (SIGTERM, as systemd does).
        wait_for_sync(
            lambda: {x.host for x in list(answers) if x.status == 200} == {a, b},
            timeout=60,
            what="both hosts to answer under load",
        )
        stop_at.append(time.monotonic())
        assert gateway.b.stop() == 0
        stopped = time.monotonic()
        # Past LiteLLM's cooldown, keep asking for 10 s more.
        settle = stopped + COOLDOWN_S
        wait_for_sync(
            lambda: bool(answers) and answers[-1].started > settle + 10,
            timeout=COOLDOWN_S + 60,
            what="requests past the cooldown",
        )
    finally:
        end.set()
        for t in threads:
            t.join(120)
    began = stop_at[0]
    during = [x for x in answers if began - 1 <= x.started <= settle]
    after = [x for x in answers if x.started > settle]
    failed_during = [x for x in during if x.status != 200]
    failed_after = [x for x in after if x.status != 200]
    slowest = max((x.seconds for x in during), default=0.0)
    retried = [x for x in during if x.headers.get("x-litellm-attempted-retries", "0") != "0"]
    retried_after = [x for x in after if x.headers.get("x-litellm-attempted-retries", "0") != "0"]
    last_b = max((x.started + x.seconds for x in answers if x.host == b), default=began)
    report = (
        f"host b stopped; {len(during)} requests from 1 s before it to the end of the "
        f"{COOLDOWN_S} s cooldown: {len(failed_during)} failed, {len(retried)} answered "
        f"after a retry, slowest {slowest:.2f} s, "
        f"last answer from b {last_b - began:+.2f} s after the stop; "
        f"{len(after)} requests after the cooldown: {len(failed_after)} failed, "
        f"{len(retried_after)} retried"
    )
    print("\n" + report)
    record_property("failover", report)
    assert after, "no request was made after the cooldown"
    assert not failed_after, [(x.status, x.body) for x in failed_after][:3]
    assert all(x.host == a for x in after)
    # LiteLLM retries a request whose host went away on the other one: at most the
    # requests in flight at the stop may fail.
    assert len(failed_during) <= WORKERS, [(x.status, x.body) for x in failed_during][:3]
