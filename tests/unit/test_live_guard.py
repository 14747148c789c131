"""The live view's guard: which browser requests the page answers (pure header checks)."""

from __future__ import annotations

import pytest

from helixd.ui.guard import Policy, refusal

LOOPBACK = Policy("127.0.0.1", 11400, keys_required=False)
KEYED = Policy("0.0.0.0", 11400, keys_required=True)
JSON = "application/json"


def post(host: str, origin: str | None, content_type: str = JSON, **more: str) -> dict[str, str]:
    headers = {"Host": host, "Content-Type": content_type, **more}
    if origin is not None:
        headers["Origin"] = origin
    return headers


@pytest.mark.parametrize(
    "host", ["127.0.0.1:11400", "localhost:11400", "[::1]:11400", "LOCALHOST:11400"]
)
def test_the_page_and_its_feed_answer_loopback_names(host: str) -> None:
    for path in ("/ui/", "/ui/static/app.js", "/ui/api/events"):
        assert refusal(LOOPBACK, "GET", path, {"Host": host}) is None


@pytest.mark.parametrize(
    "host",
    ["evil.example:11400", "evil.example", "127.0.0.1.nip.io:11400", "", "127.0.0.1:8080"],
)
def test_a_rebound_or_foreign_host_is_refused(host: str) -> None:
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, its Host stays its own."""
    why = refusal(LOOPBACK, "GET", "/ui/api/events", {"Host": host})
    assert why is not None and "not this helixd's address" in why
    assert refusal(LOOPBACK, "POST", "/ui/api/actions", post(host, f"http://{host}")) is not None


def test_the_listen_address_is_its_own_name() -> None:
    lan = Policy("192.168.1.20", 11400, keys_required=False)
    assert refusal(lan, "GET", "/ui/", {"Host": "192.168.1.20:11400"}) is None
    assert refusal(lan, "GET", "/ui/", {"Host": "192.168.1.21:11400"}) is not None


def test_a_same_origin_action_passes() -> None:
    headers = post("127.0.0.1:11400", "http://127.0.0.1:11400", Sec_Fetch_Site="same-origin")
    assert refusal(LOOPBACK, "POST", "/ui/api/actions", headers) is None


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        (post("127.0.0.1:11400", "http://evil.example"), "cross-origin"),
        (post("127.0.0.1:11400", "null"), "cross-origin"),
        (post("127.0.0.1:11400", None), "needs the Origin"),
        (
            post("127.0.0.1:11400", "http://127.0.0.1:11400", "application/x-www-form-urlencoded"),
            "must be JSON",
        ),
        (post("127.0.0.1:11400", "http://127.0.0.1:11400", "text/plain"), "must be JSON"),
        (
            {**post("127.0.0.1:11400", "http://127.0.0.1:11400"), "Sec-Fetch-Site": "cross-site"},
            "cross-site",
        ),
    ],
)
def test_cross_site_actions_are_refused(headers: dict[str, str], words: str) -> None:
    why = refusal(LOOPBACK, "POST", "/ui/api/actions", headers)
    assert why is not None and words in why


def test_a_cross_site_read_of_the_feed_is_refused_but_a_link_to_the_page_opens() -> None:
    cross = {"Host": "127.0.0.1:11400", "Sec-Fetch-Site": "cross-site"}
    assert refusal(LOOPBACK, "GET", "/ui/api/events", cross) is not None
    assert refusal(LOOPBACK, "GET", "/ui/api/logs/echo", cross) is not None
    assert refusal(LOOPBACK, "GET", "/ui/", cross) is None
    foreign = {"Host": "127.0.0.1:11400", "Origin": "http://evil.example"}
    assert refusal(LOOPBACK, "GET", "/ui/api/events", foreign) is not None


def test_with_keys_any_host_may_ask_the_key_decides() -> None:
    """Behind keys the page may be reached by a LAN name; the endpoint checks the key."""
    headers = post("gpu-box.lan:11400", "http://gpu-box.lan:11400")
    assert refusal(KEYED, "POST", "/ui/api/actions", headers) is None
    assert refusal(KEYED, "GET", "/ui/", {"Host": "gpu-box.lan:11400"}) is None
    cross = post("gpu-box.lan:11400", "http://evil.example")
    assert refusal(KEYED, "POST", "/ui/api/actions", cross) is not None
