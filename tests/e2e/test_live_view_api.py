"""The live view's API against a real helixd: the page, its event stream, logs, actions,
and the checks that keep other web sites out (cross-origin, DNS rebinding, keys)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.e2e.live import SseStream, model_state
from tests.e2e.test_proxy import echo_models, post

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
KEY = "sk-live-view-0123456789"
SECRET = "supersecretvalue1"


def call(
    h: Any, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(h.proxy_url + path, data, headers or {}, method=method)
    try:
        with OPENER.open(request, timeout=60) as response:
            raw = response.read()
            return response.status, dict(response.headers), raw
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def act(h: Any, action: str, target: str, **headers: str) -> tuple[int, Any]:
    own = {"Origin": h.proxy_url, "Content-Type": "application/json"}
    status, _, body = call(
        h, "POST", "/ui/api/actions", {"action": action, "target": target}, own | headers
    )
    return status, body if isinstance(body, dict) else json.loads(body)


def test_the_page_is_served_with_a_strict_policy(helix: Any) -> None:
    h = helix(echo_models("tiny"))
    status, headers, body = call(h, "GET", "/ui/")
    assert status == 200 and b"<html" in body.lower()
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    for name in ("app.js", "app.css"):
        assert call(h, "GET", f"/ui/static/{name}")[0] == 200
    status, _, error = call(h, "GET", "/ui/static/../daemon.py")
    assert status == 404
    status, _, error = call(h, "GET", "/ui/static/secret.txt")
    assert status == 404 and "no such file" in error["error"]["message"]


def test_the_feed_follows_a_load_and_a_request(helix: Any) -> None:
    h = helix(echo_models("tiny", "other"))
    stream = SseStream(h.proxy_port, "/ui/api/events")
    try:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        first = stream.until(lambda e: e[0] == "snapshot")
        assert {m["name"] for m in first[1]["models"]} == {"tiny", "other"}
        assert first[1]["ui"] == {"actions": True, "auth": False}
        assert h.ctl("load", "tiny").returncode == 0
        loaded = stream.until(lambda e: model_state(e, "tiny") == "loaded")
        tiny = next(m for m in loaded[1]["models"] if m["name"] == "tiny")
        assert tiny["state_since"] is not None and tiny["evict_rank"] == 1
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        assert post(h, "/v1/chat/completions", body.encode())[0] == 200
        _, record = stream.until(lambda e: e[0] == "request")
        assert (record["model"], record["status"], record["path"]) == (
            "tiny",
            200,
            "/v1/chat/completions",
        )
        # A request refused before any model was tried is in the tail too.
        ghost = json.dumps({"model": "ghost", "messages": []}).encode()
        assert post(h, "/v1/chat/completions", ghost)[0] == 404
        _, refused = stream.until(lambda e: e[0] == "request")
        assert (refused["asked"], refused["model"], refused["status"]) == ("ghost", None, 404)
    finally:
        stream.close()


def test_actions_from_the_page_and_their_refusals(helix: Any) -> None:
    h = helix(echo_models("tiny"))
    status, body = act(h, "load", "tiny")
    assert (status, body["ok"]) == (200, True) and "tiny is loaded" in body["message"]
    status, body = act(h, "pin", "tiny")
    assert status == 200 and "pinned" in body["message"]
    status, body = act(h, "unload", "tiny")
    assert status == 409 and body["error"]["code"] == "pinned"
    assert act(h, "unpin", "tiny")[0] == 200
    assert act(h, "unload", "tiny")[0] == 200
    status, body = act(h, "load", "nope")
    assert status == 404 and "nope" in body["error"]["message"]
    status, body = act(h, "restart", "nope")
    assert status == 404 and body["error"]["code"] == "unknown_provider"
    status, body = act(h, "run", "nope")
    assert status == 404 and body["error"]["code"] == "unknown_job"
    status, body = act(h, "explode", "tiny")
    assert status == 400 and "expected" in body["error"]["message"]


def test_a_cross_origin_action_is_refused_and_does_nothing(helix: Any) -> None:
    h = helix(echo_models("tiny"))
    status, body = act(h, "load", "tiny", Origin="http://evil.example")
    assert status == 403 and "cross-origin" in body["error"]["message"]
    status, body = act(h, "load", "tiny", **{"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    # A form post (what a cross-site page can send without asking) is refused too.
    status, _, body = call(
        h,
        "POST",
        "/ui/api/actions",
        None,
        {"Origin": h.proxy_url, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 403 and "JSON" in body["error"]["message"]
    assert h.status()["models"][0]["state"] == "unloaded"


def test_a_rebinding_host_is_refused(helix: Any) -> None:
    """evil.example resolved to 127.0.0.1: same origin for the browser, not for helixd."""
    h = helix(echo_models("tiny"))
    rebound = f"evil.example:{h.proxy_port}"
    stream = SseStream(h.proxy_port, "/ui/api/events", {"Host": rebound})
    try:
        assert stream.status == 403
        assert "not this helixd's address" in stream.body()["error"]["message"]
    finally:
        stream.close()
    status, _body = act(h, "load", "tiny", Host=rebound, Origin=f"http://{rebound}")
    assert status == 403
    assert h.status()["models"][0]["state"] == "unloaded"


def test_with_keys_the_page_loads_but_its_api_needs_the_key(helix: Any) -> None:
    h = helix(echo_models("tiny"), proxy=f'api_keys = ["{KEY}"]')
    assert call(h, "GET", "/ui/")[0] == 200
    assert call(h, "GET", "/ui/static/app.js")[0] == 200
    stream = SseStream(h.proxy_port, "/ui/api/events")
    try:
        assert stream.status == 401
    finally:
        stream.close()
    assert act(h, "load", "tiny")[0] == 401
    stream = SseStream(h.proxy_port, "/ui/api/events", {"Authorization": f"Bearer {KEY}"})
    try:
        _, doc = stream.until(lambda e: e[0] == "snapshot")
        assert doc["ui"]["auth"] is True
        assert KEY not in json.dumps(doc)
    finally:
        stream.close()
    status, _body = act(h, "load", "tiny", Authorization=f"Bearer {KEY}")
    assert status == 200


def test_a_log_is_followed_with_its_secrets_masked(helix: Any) -> None:
    config = echo_models("tiny").replace(
        'command = ["{python}", "-m", "helixd.providers.echo", "--host", "{host}", "--port", '
        '"{port}",\n           "--model", "{model}"]',
        'command = ["sh", "-c", "exec {python} -m helixd.providers.echo --host {host} '
        f'--port {{port}} --model {{model}}", "sh", "--api-key={SECRET}"]',
    )
    assert SECRET in config
    h = helix(config)
    assert h.ctl("load", "tiny").returncode == 0
    stream = SseStream(h.proxy_port, "/ui/api/logs/tiny?lines=50")
    try:
        assert stream.status == 200
        _, line = stream.until(lambda e: e[0] == "line" and "started pid" in e[1]["text"])
        assert SECRET not in line["text"] and "--api-key=••••" in line["text"]
        assert h.ctl("unload", "tiny").returncode == 0
        _, end = stream.until(lambda e: e[0] == "end")
        assert "replaced" in end["reason"] or "stopping" in end["reason"]
    finally:
        stream.close()
    missing = SseStream(h.proxy_port, "/ui/api/logs/nope")
    try:
        assert missing.status == 404 and "nope" in missing.body()["error"]["message"]
    finally:
        missing.close()


@pytest.mark.parametrize(
    ("ui", "path", "status", "code"),
    [
        ("[ui]\nenabled = false\n", "/ui/", 404, "ui_off"),
        ("[ui]\nactions = false\n", "/ui/api/actions", 403, "actions_off"),
    ],
)
def test_the_ui_switches(helix: Any, ui: str, path: str, status: int, code: str) -> None:
    h = helix(echo_models("tiny") + ui)
    if path == "/ui/":
        got, _, body = call(h, "GET", path)
    else:
        got, body = act(h, "load", "tiny")
    assert got == status and body["error"]["code"] == code


def test_helixctl_events_streams_the_same_document(helix: Any) -> None:
    import socket

    h = helix(echo_models("tiny"))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(str(h.socket))
        sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: helixd\r\n\r\n")
        reader = sock.makefile("rb")
        assert b" 200 " in reader.readline()
        while reader.readline() not in (b"\r\n", b""):
            pass  # headers
        reader.readline()  # the first chunk's size (chunked transfer)
        record = json.loads(reader.readline())
    assert record["type"] == "snapshot" and record["data"]["models"][0]["name"] == "tiny"


def test_a_reload_turns_actions_off_and_the_page_is_told(helix: Any) -> None:
    h = helix(echo_models("tiny"))
    stream = SseStream(h.proxy_port, "/ui/api/events")
    try:
        stream.until(lambda e: e[0] == "snapshot" and e[1]["ui"]["actions"] is True)
        h.write_config(echo_models("tiny") + "[ui]\nactions = false\n")
        assert h.ctl("reload").returncode == 0
        stream.until(lambda e: e[0] == "snapshot" and e[1]["ui"]["actions"] is False)
    finally:
        stream.close()
    status, body = act(h, "load", "tiny")
    assert status == 403 and body["error"]["code"] == "actions_off"
    h.write_config(echo_models("tiny") + "[ui]\nenabled = false\n")
    result = h.ctl("--json", "reload")
    assert result.returncode == 0
    assert "[ui] enabled changed" in " ".join(json.loads(result.stdout)["warnings"])


def test_stopping_helixd_ends_the_page_stream_and_does_not_wait_on_it(helix: Any) -> None:
    h = helix(echo_models("tiny"))
    stream = SseStream(h.proxy_port, "/ui/api/events")
    try:
        stream.until(lambda e: e[0] == "snapshot")
        assert h.stop() == 0
        _, end = stream.until(lambda e: e[0] == "end")
        assert end["reason"] == "helixd is stopping"
    finally:
        stream.close()
