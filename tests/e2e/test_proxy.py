"""The proxy end to end: the official openai client against helixd's port, real model
processes behind it (the echo server started per model by a process-per-model provider).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest

from tests.conftest import import_real_provider, wait_for_sync

openai = import_real_provider("openai")

# No proxies: the environment may point urllib at one, and helixd is local.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def echo_models(*models: str, provider: str = "echo", **keys: Any) -> str:
    """A process-per-model echo provider and its models; ``keys`` go on every model."""
    text = f"""
[providers.{provider}]
kind = "openai"
command = ["{{python}}", "-m", "helixd.providers.echo", "--host", "{{host}}", "--port", "{{port}}",
           "--model", "{{model}}"{{extra}}]
health = {{ path = "/health", interval_s = 1 }}
start_seconds = 30
stop_timeout_s = 3
"""
    extra = keys.pop("echo_args", [])
    text = text.replace("{extra}", "".join(f', "{a}"' for a in extra))
    for model in models:
        text += f'\n[models.{model}]\nprovider = "{provider}"\n'
        text += "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    return text


def client(h: Any, **kw: Any) -> Any:
    return openai.OpenAI(base_url=h.proxy_url + "/v1", api_key="unused", max_retries=0, **kw)


def post(h: Any, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        h.proxy_url + path, body, {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with OPENER.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])  # HELIXD_LOOP: both loops serve
def test_the_openai_client_chats_streams_completes_and_embeds_through_helixd(
    helix: Any, loop: str
) -> None:
    h = helix(echo_models("coder", aliases=["code"]), start=False)
    h.start(extra_env={"HELIXD_LOOP": loop})
    assert ("event loop: asyncio's own" in h.stderr()) == (loop == "asyncio")
    c = client(h)
    raw = c.chat.completions.with_raw_response.create(
        model="code", messages=[{"role": "user", "content": "hello there"}]
    )
    assert raw.headers["x-helix-model"] == "coder"
    answer = raw.parse()
    assert answer.choices[0].message.content.startswith("echo:")
    assert "hello there" in answer.choices[0].message.content
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in c.chat.completions.create(
            model="coder", messages=[{"role": "user", "content": "one two three"}], stream=True
        )
        if chunk.choices
    ]
    assert len(pieces) > 2 and "".join(pieces).startswith("echo:")
    completion = c.completions.create(model="coder", prompt="say this")
    assert completion.choices[0].text.startswith("echo:")
    embedding = c.embeddings.create(model="coder", input=["a", "b"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) > 0
    listed = {m.id: m for m in c.models.list()}
    assert set(listed) == {"coder", "code"}
    assert listed["code"].model_extra["helix"] == {
        "state": "loaded",
        "provider": "echo",
        "alias_of": "coder",
    }


def test_ten_concurrent_requests_for_a_slow_loading_model_share_one_load(helix: Any) -> None:
    h = helix(echo_models("slow", echo_args=["--startup-delay", "1.5"], max_concurrency=16))

    async def ask(session: aiohttp.ClientSession, i: int) -> str:
        body = {"model": "slow", "messages": [{"role": "user", "content": f"n{i}"}]}
        async with session.post(h.proxy_url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200, await response.text()
            data = await response.json()
            content: str = data["choices"][0]["message"]["content"]
            return content

    async def main() -> list[str]:
        async with aiohttp.ClientSession(trust_env=False) as session:
            return await asyncio.gather(*(ask(session, i) for i in range(10)))

    answers = asyncio.run(main())
    assert all(f"n{i}" in answers[i] for i in range(10))
    log = h.stderr()
    assert log.count("model slow: unloaded → loading") == 1


def test_a_full_queue_answers_429_and_a_vanished_client_frees_its_slot(helix: Any) -> None:
    h = helix(
        echo_models("one", echo_args=["--token-delay", "0.2"], max_concurrency=1, max_queue=1)
    )
    assert h.ctl("load", "one").returncode == 0
    long_body = {
        "model": "one",
        "stream": True,
        "messages": [{"role": "user", "content": "w " * 50}],
    }

    async def main() -> None:
        async with aiohttp.ClientSession(trust_env=False) as session:
            url = h.proxy_url + "/v1/chat/completions"
            holder = await session.post(url, json=long_body)  # streaming: holds the slot
            assert holder.status == 200
            queued = asyncio.create_task(session.post(url, json=long_body))
            await wait_async(lambda: model_info(h, "one")["queued"] == 1)
            async with session.post(url, json=long_body) as refused:
                assert refused.status == 429
                assert refused.headers["Retry-After"] == "1"
                error = (await refused.json())["error"]
                assert error["code"] == "queue_full" and "max_queue = 1" in error["message"]
            # The streaming client goes away mid-answer: its slot goes to the queued one.
            holder.close()
            second = await queued
            assert second.status == 200
            await wait_async(lambda: model_info(h, "one")["queued"] == 0)
            second.close()
            await wait_async(lambda: model_info(h, "one")["in_flight"] == 0)

    asyncio.run(main())


def test_bad_requests_get_openai_style_errors(helix: Any) -> None:
    h = helix(echo_models("m"), proxy="max_body_mib = 1")
    status, body = post(h, "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = post(h, "/v1/chat/completions", b'{"messages": []}')
    assert status == 400 and body["error"]["message"] == "the request needs a 'model' (a string)"
    status, body = post(h, "/v1/chat/completions", b'{"model": "nope", "messages": []}')
    assert status == 404 and body["error"]["message"] == "model 'nope' not found; models: m"
    big = json.dumps({"model": "m", "prompt": "x" * (2 * 1024 * 1024)}).encode()
    status, body = post(h, "/v1/completions", big)
    assert status == 413 and "max_body_mib" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"


def test_api_keys_are_enforced(helix: Any) -> None:
    key = "k" * 24
    h = helix(echo_models("m"), proxy=f'api_keys = ["{key}"]')
    status, body = post(h, "/v1/chat/completions", b'{"model": "m", "messages": []}')
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    ok = openai.OpenAI(base_url=h.proxy_url + "/v1", api_key=key, max_retries=0)
    answer = ok.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content.startswith("echo:")


def test_helixd_refuses_a_keyless_listener_beyond_loopback(helix: Any) -> None:
    h = helix(echo_models("m"), start=False)
    text = h.config.read_text().replace('listen = "127.0.0.1:', 'listen = "0.0.0.0:')
    h.config.write_text(text)
    check = h.ctl("config", "check", str(h.config))
    assert check.returncode == 1
    assert "is reachable from other hosts: set api_keys" in check.stderr
    # And the daemon itself will not start on it.
    h.start(wait=False)
    assert h.proc.wait(30) != 0
    assert "is reachable from other hosts: set api_keys" in h.stderr()


def test_the_request_that_triggers_a_load_is_not_counted_against_max_queue(helix: Any) -> None:
    # max_concurrency = 1 and max_queue = 1: one request for the slot (it waits for the
    # cold load) and one queued behind it are accepted; the other three get 429.
    h = helix(
        echo_models("cold", echo_args=["--startup-delay", "1.5"], max_concurrency=1, max_queue=1)
    )
    body = json.dumps({"model": "cold", "messages": [{"role": "user", "content": "hi"}]})

    async def main() -> list[int]:
        async with aiohttp.ClientSession(trust_env=False) as session:
            url = h.proxy_url + "/v1/chat/completions"
            headers = {"Content-Type": "application/json"}

            async def ask() -> int:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    return response.status

            first = asyncio.create_task(ask())  # triggers the load
            await wait_async(lambda: model_info(h, "cold")["state"] == "loading")
            rest = [asyncio.create_task(ask()) for _ in range(4)]
            return [await first, *sorted([await t for t in rest])]

    statuses = asyncio.run(main())
    assert statuses[0] == 200
    assert sorted(statuses) == [200, 200, 429, 429, 429], statuses


def test_a_model_server_killed_mid_stream_ends_the_stream_with_an_error_event(helix: Any) -> None:
    h = helix(echo_models("m", echo_args=["--token-delay", "0.1"]))
    assert h.ctl("load", "m").returncode == 0
    pid = model_info(h, "m")["process"]["pid"]
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "w " * 100}]}

    async def main() -> tuple[list[str], float]:
        async with aiohttp.ClientSession(trust_env=False) as session:
            url = h.proxy_url + "/v1/chat/completions"
            async with session.post(url, json=body) as response:
                lines: list[str] = []
                killed_at = 0.0
                async for raw in response.content:
                    line = raw.decode().strip()
                    if line:
                        lines.append(line)
                    if len(lines) == 3:
                        os.kill(pid, signal.SIGKILL)
                        killed_at = time.monotonic()
                return lines, time.monotonic() - killed_at

    lines, after_kill = asyncio.run(main())
    assert after_kill < 1.0, f"the stream took {after_kill:.2f} s to end after the kill"
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_failed"
    # In words a user can act on; aiohttp's own name for it read as an HTTP 400.
    message = last["error"]["message"]
    assert "closed before the answer was complete" in message, message
    assert "TransferEncodingError" not in message and "400" not in message


def logged(h: Any, text: str) -> None:
    """The access log line is written as the handler ends: just after the client has
    read a streamed answer, so wait for it (bounded)."""
    wait_for_sync(lambda: text in h.stderr(), timeout=10, what=f"log line {text!r}")


def model_info(h: Any, name: str) -> dict[str, Any]:
    result = h.ctl("--json", "models")
    models: list[dict[str, Any]] = json.loads(result.stdout)["models"]
    return next(m for m in models if m["name"] == name)


async def wait_async(predicate: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {predicate}")
        await asyncio.sleep(0.05)


def test_a_client_that_stalls_mid_body_times_out_with_408(helix: Any) -> None:
    import socket

    h = helix(echo_models("m"), proxy='read_timeout_s = "500ms"')
    with socket.create_connection(("127.0.0.1", h.proxy_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model": "m"'
        )
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 408")
    assert "request body not received within 0.5 s" in answer


# A provider whose every answer is an injected HTTP 500.
FAILING_PROVIDER = """
[providers.bad]
kind = "openai"
command = ["{python}", "-m", "helixd.providers.echo", "--host", "{host}", "--port", "{port}",
           "--model", "{model}", "--fail-rate", "1"]
health = { path = "/health", interval_s = 1 }
"""

ROUTES = (
    FAILING_PROVIDER
    + """

[models.broken-a]
provider = "bad"
[models.broken-b]
provider = "bad"

[routes.coding]
candidates = ["broken-a", "coder"]

[routes.doomed]
candidates = ["broken-a", "broken-b", "coder"]
max_attempts = 2

[routes.tasks]
candidates = ["coder"]
rules = [{ match = "(?i)\\\\b(integral|derivative|equation)\\\\b", model = "maths" }]
"""
)


def test_routes_fall_back_stop_at_their_limit_and_route_tasks_by_rule(helix: Any) -> None:
    h = helix(echo_models("coder", "maths") + ROUTES, proxy="failures_before_cooldown = 2")
    c = client(h)
    raw = c.chat.completions.with_raw_response.create(
        model="coding", messages=[{"role": "user", "content": "write a loop"}]
    )
    assert (raw.headers["x-helix-route"], raw.headers["x-helix-model"]) == ("coding", "coder")
    assert raw.parse().choices[0].message.content.startswith("echo:")

    # Two failing candidates and max_attempts = 2: the third, healthy one is never tried.
    status, body = post(
        h, "/v1/chat/completions", b'{"model": "doomed", "messages": [{"role": "user"}]}'
    )
    assert status == 500 and body["error"]["code"] == "injected_failure"
    logged(h, "asked=doomed route=doomed model=broken-b attempts=2 status=500")

    # broken-a failed twice in a row: it cools down, and routes now try it last.
    cooling = h.status()["proxy"]["cooling_down"]
    assert set(cooling) == {"broken-a"} and 0 < cooling["broken-a"] <= 60
    raw = c.chat.completions.with_raw_response.create(
        model="coding", messages=[{"role": "user", "content": "again"}]
    )
    assert raw.headers["x-helix-model"] == "coder"
    logged(h, "asked=coding route=coding model=coder attempts=1 status=200")

    maths = c.chat.completions.with_raw_response.create(
        model="tasks", messages=[{"role": "user", "content": "solve this Equation for x"}]
    )
    assert maths.headers["x-helix-model"] == "maths"
    plain = c.chat.completions.with_raw_response.create(
        model="tasks", messages=[{"role": "user", "content": "rename a variable"}]
    )
    assert plain.headers["x-helix-model"] == "coder"


def test_metrics_count_requests_loads_errors_and_show_queues(helix: Any) -> None:
    h = helix(echo_models("coder", "maths") + ROUTES)
    c = client(h)
    for _ in range(3):
        c.chat.completions.create(model="coder", messages=[{"role": "user", "content": "x"}])
    c.chat.completions.create(model="coding", messages=[{"role": "user", "content": "y"}])

    def scrape() -> set[str]:
        with OPENER.open(h.proxy_url + "/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return set(response.read().decode().splitlines())

    # Counted as each handler ends, just after its client has read the answer.
    last = 'helix_requests_total{model="coder",route="coding",status="200"} 1.0'
    wait_for_sync(lambda: last in scrape(), timeout=10, what="the last request counted")
    lines = scrape()
    assert 'helix_requests_total{model="coder",route="-",status="200"} 3.0' in lines
    assert 'helix_request_errors_total{kind="error",model="broken-a"} 1.0' in lines
    assert 'helix_model_loads_total{model="coder",result="ok"} 1.0' in lines
    assert 'helix_queue_depth{model="coder"} 0.0' in lines
    assert 'helix_model_loaded{model="coder"} 1.0' in lines
    assert any(line.startswith('helix_first_byte_seconds_count{model="coder"}') for line in lines)
    tokens = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("helix_tokens_total{")
    }
    # Four answers, each reporting its usage: 'x'/'y' in, 'echo: x' out, at least.
    assert tokens['direction="in",model="coder"'] >= 4
    assert tokens['direction="out",model="coder"'] >= 8


def test_the_ollama_client_chats_generates_embeds_and_lists_through_helixd(helix: Any) -> None:
    ollama = import_real_provider("ollama")
    h = helix(echo_models("coder", aliases=["code"]))
    c = ollama.Client(host=h.proxy_url)
    assert [m.model for m in c.list().models] == ["coder"]  # its alias is listed on it
    answer = c.chat(model="code", messages=[{"role": "user", "content": "hello there"}])
    assert answer.message.content.startswith("echo:") and answer.done
    pieces = list(
        c.chat(model="coder", messages=[{"role": "user", "content": "one two"}], stream=True)
    )
    assert len(pieces) > 2 and pieces[-1].done and pieces[-1].done_reason == "stop"
    # Token counts from the usage the upstream was asked to stream.
    assert (pieces[-1].prompt_eval_count, pieces[-1].eval_count) == (2, 3)
    assert "".join(p.message.content for p in pieces).startswith("echo:")
    generated = "".join(p.response for p in c.generate(model="coder", prompt="abc", stream=True))
    assert generated.startswith("echo:")
    embedded = c.embed(model="coder", input=["a", "b"])
    assert len(embedded.embeddings) == 2
    resident = c.ps().models
    assert [m.model for m in resident] == ["coder"]
    # keep_alive is helixd's default of 600 s: it expires about that long after its use.
    assert resident[0].expires_at is not None
    left = resident[0].expires_at.timestamp() - time.time()
    assert 500 < left <= 600
    # An empty generate loads, keep_alive 0 unloads, as with Ollama itself.
    assert c.generate(model="coder", keep_alive=0).done_reason == "unload"
    assert c.ps().models == []
    assert c.generate(model="coder").done_reason == "load"
    try:
        c.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    except ollama.ResponseError as exc:
        assert exc.status_code == 404 and "model 'nope' not found" in exc.error
    else:
        raise AssertionError("an unknown model must be a 404")


def test_a_streaming_request_gets_keepalives_while_its_model_loads(helix: Any) -> None:
    h = helix(
        echo_models("slow", echo_args=["--startup-delay", "1.5"]), proxy='sse_keepalive_s = "300ms"'
    )
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}

    async def main() -> list[str]:
        async with aiohttp.ClientSession(trust_env=False) as session:
            url = h.proxy_url + "/v1/chat/completions"
            async with session.post(url, json=body) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/event-stream")
                return [line.decode().rstrip() async for line in response.content]

    lines = [line for line in asyncio.run(main()) if line]
    keepalives = [line for line in lines if line.startswith(":")]
    data = [line for line in lines if line.startswith("data:")]
    assert len(keepalives) >= 2, lines  # 1.5 s of loading at one comment per 0.3 s
    assert lines.index(keepalives[-1]) < lines.index(data[0])  # all before the answer
    assert data[-1] == "data: [DONE]"
    text = "".join(
        json.loads(d[5:])["choices"][0]["delta"].get("content") or ""
        for d in data[:-1]
        if json.loads(d[5:])["choices"]
    )
    assert text.startswith("echo:")


def test_a_remote_past_its_daily_budget_is_skipped_and_alerted(helix: Any, tmp_path: Any) -> None:
    import subprocess
    import sys

    from helixd.supervisor.spec import free_port

    port = free_port()
    cloud = subprocess.Popen(
        [sys.executable, "-m", "helixd.providers.echo", "--port", str(port), "--model", "gpt-x"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_sync(lambda: _answers(f"http://127.0.0.1:{port}/health"), what="the remote")
        config = (
            echo_models("local")
            + f"""
[providers.cloud]
kind = "remote"
url = "http://127.0.0.1:{port}"
price_input_per_mtok = 1000000.0
price_output_per_mtok = 1000000.0
daily_budget = 5.0

[models.cloud-model]
provider = "cloud"
id = "gpt-x"

[routes.smart]
candidates = ["cloud-model", "local"]
"""
        )
        h = helix(config)
        c = client(h)
        first = c.chat.completions.with_raw_response.create(
            model="smart", messages=[{"role": "user", "content": "a b c"}]
        )
        assert first.headers["x-helix-model"] == "cloud-model"
        usage = first.parse().usage
        spent = h.status()["proxy"]["spend"]["cloud"]
        assert spent == {
            "spent_today": usage.prompt_tokens + usage.completion_tokens,
            "budget": 5.0,
        }
        logged(h, "ALERT: remote cloud is past its daily budget")
        second = c.chat.completions.with_raw_response.create(
            model="smart", messages=[{"role": "user", "content": "again"}]
        )
        assert second.headers["x-helix-model"] == "local"
        status, body = post(
            h, "/v1/chat/completions", b'{"model": "cloud-model", "messages": [{"role": "user"}]}'
        )
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
        assert "past its daily budget" in body["error"]["message"]
        # Spend survives a restart within the day.
        h.stop()
        h.start()
        assert h.status()["proxy"]["spend"]["cloud"]["spent_today"] == spent["spent_today"]
    finally:
        cloud.terminate()
        cloud.wait(10)


def _answers(url: str) -> bool:
    try:
        with OPENER.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_a_classifier_model_picks_the_model_by_its_label(helix: Any) -> None:
    # The echo server answers "echo: <the user's words>": a stand-in classifier whose
    # label is whichever listed word the user wrote.
    config = (
        echo_models("coder", "maths", "router")
        + """
[routes.auto]
candidates = ["coder", "maths"]

[routes.auto.classifier]
model = "router"
labels = { math = "maths", code = "coder" }
default = "coder"
# Braces in a prompt are text (a JSON example); only {labels} is replaced.
prompt = 'One of {labels}, as JSON: {"label": "code"}'
"""
        + FAILING_PROVIDER
        + """
[models.broken-classifier]
provider = "bad"

[routes.auto-broken]
candidates = ["coder", "maths"]
classifier = { model = "broken-classifier", labels = { math = "maths" }, default = "coder" }
"""
    )
    h = helix(config)
    c = client(h)
    maths = c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "a math question, please"}]
    )
    assert (maths.headers["x-helix-model"], maths.headers["x-helix-label"]) == ("maths", "math")
    other = c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hello"}]
    )
    assert (other.headers["x-helix-model"], other.headers["x-helix-label"]) == ("coder", "default")
    # A classifier that fails falls back to the route's default.
    fallback = c.chat.completions.with_raw_response.create(
        model="auto-broken", messages=[{"role": "user", "content": "a math question"}]
    )
    assert (fallback.headers["x-helix-model"], fallback.headers["x-helix-label"]) == (
        "coder",
        "default",
    )
    logged(h, "classifier broken-classifier failed (HTTP 500); using the default")


def test_a_dead_remote_cools_down_all_its_models_at_once(helix: Any) -> None:
    from helixd.supervisor.spec import free_port

    dead = free_port()  # nothing listens there
    config = (
        echo_models("local")
        + f"""
[providers.lan]
kind = "remote"
url = "http://127.0.0.1:{dead}"

[models.lan-a]
provider = "lan"
[models.lan-b]
provider = "lan"

[routes.any]
candidates = ["lan-a", "lan-b", "local"]
"""
    )
    h = helix(config, proxy="failures_before_cooldown = 1")
    c = client(h)
    first = c.chat.completions.with_raw_response.create(
        model="any", messages=[{"role": "user", "content": "x"}]
    )
    assert first.headers["x-helix-model"] == "local"
    # lan-a failed: the one server behind lan-a and lan-b cools down, so lan-b is not
    # tried after it; the request went straight on to local.
    logged(h, "asked=any route=any model=local attempts=2 status=200")
    cooling = h.status()["proxy"]["cooling_down"]
    assert set(cooling) == {"lan-a", "provider:lan"}
    second = c.chat.completions.with_raw_response.create(
        model="any", messages=[{"role": "user", "content": "y"}]
    )
    assert second.headers["x-helix-model"] == "local"
    logged(h, "asked=any route=any model=local attempts=1 status=200")


def test_api_keys_are_enforced_on_a_listener_beyond_loopback(helix: Any) -> None:
    key = "s" * 24
    h = helix(echo_models("m"), start=False, proxy=f'api_keys = ["{key}"]')
    text = h.config.read_text().replace('listen = "127.0.0.1:', 'listen = "0.0.0.0:')
    h.config.write_text(text)
    h.start()
    assert h.status()["proxy"]["listen"] == f"0.0.0.0:{h.proxy_port}"
    status, body = post(h, "/v1/chat/completions", b'{"model": "m", "messages": []}')
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = post(
        h,
        "/v1/chat/completions",
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
        {"Authorization": f"Bearer {key}"},
    )
    assert status == 200 and body["choices"][0]["message"]["content"].startswith("echo:")
