"""``helixctl export litellm``'s pure part: hosts in, LiteLLM's proxy config out."""

from __future__ import annotations

from typing import Any

import pytest

from helixctl.export import (
    ExportError,
    Host,
    Model,
    Route,
    endpoint_base,
    header,
    host_from_control,
    host_from_listing,
    litellm_config,
)
from helixctl.yaml_out import plain, scalar, to_yaml

yaml = pytest.importorskip("yaml")

LISTING = {
    "object": "list",
    "data": [
        {
            "id": "coder",
            "object": "model",
            "helix": {
                "state": "loaded",
                "provider": "llama",
                "readiness": "loaded",
                "max_concurrency": 3,
                "aliases": ["code"],
            },
        },
        {"id": "code", "object": "model", "helix": {"state": "loaded", "alias_of": "coder"}},
        {"id": "mathstral", "object": "model", "helix": {"state": "unloaded", "provider": "v"}},
        {
            "id": "coding",
            "object": "model",
            "helix": {
                "kind": "route",
                "candidates": ["coder", "mathstral"],
                "strategy": "fallback",
            },
        },
    ],
}


def two_hosts() -> list[Host]:
    a = Host(
        "http://gpu1:11400",
        "this helixd",
        (Model("coder", "llama", "loaded", 3, ("code",)), Model("small", "llama", "unloaded")),
    )
    b = host_from_listing("http://gpu2:11400", LISTING)
    return [a, b]


def deployments(config: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = plain(config)["model_list"]
    return found


def test_a_listing_gives_models_with_their_limits_and_routes_but_not_aliases_twice() -> None:
    host = host_from_listing("http://gpu2:11400", LISTING)
    assert [m.name for m in host.models] == ["coder", "mathstral"]
    assert host.models[0] == Model("coder", "llama", "loaded", 3, ("code",))
    assert host.models[1].max_concurrency == 4  # helixd's default when the card does not say
    assert host.routes == (Route("coding", ("coder", "mathstral"), "fallback"),)


def test_a_listing_without_helix_fields_is_not_taken_for_helixd() -> None:
    with pytest.raises(ExportError, match="without helixd's 'helix' fields"):
        host_from_listing("http://x:8000", {"data": [{"id": "llama", "object": "model"}]})
    with pytest.raises(ExportError, match="did not answer with a model list"):
        host_from_listing("http://x:8000", {"models": []})


def test_this_host_comes_from_the_control_api() -> None:
    status = {
        "socket": "/run/helixd/helixd.sock",
        "proxy": {
            "listen": "127.0.0.1:11400",
            "routes": {"coding": {"kind": "route", "candidates": ["coder"], "strategy": "x"}},
        },
    }
    models = {"models": [{"name": "coder", "provider": "p", "state": "loaded", "aliases": ["c"]}]}
    host = host_from_control(status, models)
    assert host.url == "http://127.0.0.1:11400"
    assert host.models == (Model("coder", "p", "loaded", 4, ("c",)),)
    assert host.routes == (Route("coding", ("coder",), "x"),)
    assert "loopback" in host.notes[0]
    v6 = host_from_control({"proxy": {"listen": "[fd00::1]:11400"}}, {"models": []})
    assert v6.url == "http://[fd00::1]:11400" and not v6.notes
    wildcard = host_from_control({"proxy": {"listen": "0.0.0.0:11400"}}, {"models": []})
    assert "0.0.0.0" not in wildcard.url


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://gpu2:11400", "http://gpu2:11400"),
        ("http://gpu2:11400/", "http://gpu2:11400"),
        ("https://gpu2:11400/v1/", "https://gpu2:11400"),
    ],
)
def test_host_urls_are_the_endpoints_base(given: str, base: str) -> None:
    assert endpoint_base(given) == base


@pytest.mark.parametrize("bad", ["gpu2:11400", "ftp://gpu2", "http://"])
def test_a_host_that_is_no_url_is_refused_by_name(bad: str) -> None:
    with pytest.raises(ExportError, match="expected a helixd endpoint URL"):
        endpoint_base(bad)


def test_one_deployment_per_model_per_host_with_the_key_by_reference() -> None:
    found = deployments(litellm_config(two_hosts(), "HELIXD_KEY"))
    by_host = [(d["model_name"], d["litellm_params"]["api_base"]) for d in found]
    assert by_host == [
        ("coder", "http://gpu1:11400/v1"),
        ("small", "http://gpu1:11400/v1"),
        ("coder", "http://gpu2:11400/v1"),
        ("mathstral", "http://gpu2:11400/v1"),
        ("coding", "http://gpu2:11400/v1"),
    ]
    coder = found[0]["litellm_params"]
    assert coder == {
        "model": "openai/coder",
        "api_base": "http://gpu1:11400/v1",
        "api_key": "os.environ/HELIXD_KEY",
        "max_parallel_requests": 3,
    }
    # A route has no limit of its own: its host queues within each candidate's.
    assert "max_parallel_requests" not in found[-1]["litellm_params"]
    assert {
        d["litellm_params"]["api_key"] for d in deployments(litellm_config(two_hosts(), None))
    } == {"none"}


def test_health_checks_go_to_helixds_probe_and_never_to_the_model() -> None:
    for prefer_loaded, path in ((False, "ready"), (True, "loaded")):
        config = plain(litellm_config(two_hosts(), "K", prefer_loaded))
        for d in config["model_list"]:
            base = d["litellm_params"]["api_base"].removesuffix("/v1")
            assert d["model_info"] == {
                "mode": "chat",
                "health_check_params": {"api_base": f"{base}/health/{path}/v1"},
            }
        general = config["general_settings"]
        assert general["background_health_checks"] is True
        assert general["enable_health_check_routing"] is True
        assert general["master_key"] == "os.environ/LITELLM_MASTER_KEY"


def test_agreed_aliases_become_group_aliases_and_routes_fallbacks() -> None:
    config = plain(litellm_config(two_hosts(), "K"))
    router = config["router_settings"]
    assert router["model_group_alias"] == {"code": "coder"}
    assert router["fallbacks"] == [{"coding": ["coder", "mathstral"]}]
    assert router["cooldown_time"] > 0 and router["num_retries"] >= 1


def test_an_alias_hosts_disagree_on_is_a_deployment_per_host() -> None:
    a = Host("http://a:1", "a", (Model("x", aliases=("fast",)),))
    b = Host("http://b:1", "b", (Model("y", aliases=("fast",)),))
    config = plain(litellm_config([a, b], "K"))
    assert "model_group_alias" not in config["router_settings"]
    fast = [d for d in config["model_list"] if d["model_name"] == "fast"]
    assert [d["litellm_params"]["api_base"] for d in fast] == ["http://a:1/v1", "http://b:1/v1"]
    assert {d["litellm_params"]["model"] for d in fast} == {"openai/fast"}


def test_the_yaml_reads_back_as_the_json_with_comments_saying_where_entries_came_from() -> None:
    hosts = two_hosts()
    config = litellm_config(hosts, "HELIXD_KEY")
    text = to_yaml(config, header(hosts, "HELIXD_KEY"))
    assert yaml.safe_load(text) == plain(config)
    assert "# coder on http://gpu2:11400: model of provider llama, loaded now" in text
    assert "# coding on http://gpu2:11400: route (fallback) over coder, mathstral" in text
    assert "#   http://gpu1:11400: this helixd" in text


@pytest.mark.parametrize(
    "name",
    [
        "yes",
        "null",
        "a: b",
        "# not a comment",
        'quote"s',
        "back\\slash",
        "two\nlines",
        "tab\there",
        "ünï cödé",
        "emoji 🦙",
        "nel\x85",
        "del\x7f",
        "line\u2028sep",
        "nul\x00",
        "-dash",
        "[flow]",
        "",
        "123",
    ],
)
def test_any_name_survives_the_emitter(name: str) -> None:
    host = Host("http://h:1", "src\nwith newline", (Model(name, aliases=(name + "-alias",)),))
    config = litellm_config([host], "K")
    text = to_yaml(config, header([host], "K"))
    assert yaml.safe_load(text) == plain(config)


def test_scalars_are_json_quoted_strings_numbers_and_booleans() -> None:
    assert scalar("on") == '"on"'
    assert scalar(True) == "true" and scalar(3) == "3" and scalar(None) == "null"
    assert scalar("\x85") == '"\\u0085"'
