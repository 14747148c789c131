"""``helixctl export litellm``: a LiteLLM proxy config for several helixd hosts.

Past one host, the gateway people already use — LiteLLM's proxy — goes in front of the
helixd of each host. This reads what each host serves (this host's helixd through the
control socket, the others through their endpoint's ``GET /v1/models``, whose ``helix``
objects carry state, readiness, aliases and routes) and writes the proxy's config:

- one deployment per name per host (``openai/NAME`` at ``HOST/v1``), the API key by
  reference to an environment variable (``os.environ/VAR``), never the key itself, and
  ``max_parallel_requests`` from the model's ``max_concurrency``;
- aliases as ``model_group_alias`` where every host agrees on them, else as deployments;
- helixd's routes as deployments (each host still orders and falls back within itself)
  and as ``fallbacks`` from the route to its candidates, for when no host answers it;
- background health checks that never load a model: each deployment's probe goes to
  helixd's ``/health/ready/v1`` (or ``/health/loaded/v1`` with ``prefer_loaded``), which
  answers from residency's books, and ``enable_health_check_routing`` skips hosts whose
  probe fails (LiteLLM sends to all of them again when every probe fails).

Pure functions build the config; :func:`run_litellm` does the I/O. Like every helixctl
command that talks to the daemon, this imports neither aiohttp, pydantic nor helixd
beyond :mod:`helixd.protocol`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from helixctl.context import EXIT_FAILED, Context, echo, fail
from helixctl.yaml_out import Note, plain, to_yaml
from helixd.protocol import ListModels, Status

LITELLM_VERSION = "1.108.5"  # the version the config is written for and tested with
DEFAULT_MAX_CONCURRENCY = 4  # helixd's own default, for a host that does not say
HEALTH_CHECK_INTERVAL_S = 30
COOLDOWN_S = 30
READ_TIMEOUT_S = 10.0
MASTER_KEY_ENV = "LITELLM_MASTER_KEY"  # LiteLLM's own name for it
EXIT_USAGE = 2


@dataclass(frozen=True)
class Model:
    """A model as one host serves it."""

    name: str
    provider: str = ""
    state: str = ""
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    """A route of one host: candidates (models of that host) and strategy."""

    name: str
    candidates: tuple[str, ...]
    strategy: str = "fallback"


@dataclass(frozen=True)
class Host:
    """One helixd: its endpoint's base URL, where this was read from, what it serves."""

    url: str
    source: str
    models: tuple[Model, ...] = ()
    routes: tuple[Route, ...] = ()
    notes: tuple[str, ...] = ()


class ExportError(Exception):
    """A host could not be read; the message names it and says what to do."""


# -- reading hosts --------------------------------------------------------------------


def endpoint_base(raw: str) -> str:
    """``http://h:11400``, ``http://h:11400/``, ``http://h:11400/v1`` → ``http://h:11400``."""
    url = raw.strip().rstrip("/")
    url = url.removesuffix("/v1")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ExportError(
            f"--host {raw!r}: expected a helixd endpoint URL such as http://gpu2:11400"
        )
    return url


def host_from_listing(url: str, doc: Any) -> Host:
    """A host from its endpoint's ``GET /v1/models`` (models, aliases and routes)."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ExportError(f"{url}/v1/models did not answer with a model list")
    cards = [c for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)]
    if cards and not any(isinstance(c.get("helix"), dict) for c in cards):
        raise ExportError(
            f"{url}/v1/models lists models without helixd's 'helix' fields; "
            "is this a helixd endpoint (and not the model server behind it)?"
        )
    models, routes = [], []
    for card in cards:
        helix = card.get("helix") or {}
        if not isinstance(helix, dict) or "alias_of" in helix:
            continue  # aliases are on their model's card too
        if helix.get("kind") == "route":
            candidates = tuple(str(c) for c in helix.get("candidates") or ())
            routes.append(Route(card["id"], candidates, str(helix.get("strategy", "fallback"))))
            continue
        models.append(
            Model(
                name=card["id"],
                provider=str(helix.get("provider", "")),
                state=str(helix.get("state", "")),
                max_concurrency=_concurrency(helix.get("max_concurrency")),
                aliases=tuple(str(a) for a in helix.get("aliases") or ()),
            )
        )
    notes = () if routes or not models else ("no routes",)
    return Host(url, f"GET {url}/v1/models", tuple(models), tuple(routes), notes)


def host_from_control(status: Mapping[str, Any], models_doc: Mapping[str, Any]) -> Host:
    """This host from the control API: ``GET /v1/status`` and ``GET /v1/models``."""
    proxy = status.get("proxy") or {}
    url = _reachable_url(str(proxy.get("listen", "")))
    models = tuple(
        Model(
            name=str(m["name"]),
            provider=str(m.get("provider", "")),
            state=str(m.get("state", "")),
            max_concurrency=_concurrency(m.get("max_concurrency")),
            aliases=tuple(str(a) for a in m.get("aliases") or ()),
        )
        for m in models_doc.get("models") or ()
        if isinstance(m, dict) and "name" in m
    )
    routes = tuple(
        Route(name, tuple(str(c) for c in r.get("candidates") or ()), str(r.get("strategy")))
        for name, r in (proxy.get("routes") or {}).items()
        if isinstance(r, dict)
    )
    notes: tuple[str, ...] = ()
    host = url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
    if host in ("127.0.0.1", "::1", "localhost"):
        notes = ("listens on loopback only: LiteLLM must run on this host to reach it",)
    where = f"this helixd, through its control socket {status.get('socket', '')}".rstrip()
    return Host(url, where, models, routes, notes)


def _reachable_url(listen: str) -> str:
    """The endpoint's URL from ``[proxy] listen``; a wildcard address becomes this host's name."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _concurrency(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else DEFAULT_MAX_CONCURRENCY


# -- the config -----------------------------------------------------------------------


def litellm_config(
    hosts: Iterable[Host], key_env: str | None, prefer_loaded: bool = False
) -> dict[str, Any]:
    """The LiteLLM proxy config (with :class:`Note` comments) for ``hosts``."""
    hosts = list(hosts)
    probe = "loaded" if prefer_loaded else "ready"
    api_key = f"os.environ/{key_env}" if key_env else "none"
    deployments: list[Any] = []

    def deploy(host: Host, name: str, why: str, parallel: int | None) -> None:
        params: dict[str, Any] = {
            "model": f"openai/{name}",
            "api_base": f"{host.url}/v1",
            "api_key": api_key,
        }
        if parallel is not None:
            params["max_parallel_requests"] = parallel
        info = {
            "mode": "chat",
            "health_check_params": {"api_base": f"{host.url}/health/{probe}/v1"},
        }
        entry = {"model_name": name, "litellm_params": params, "model_info": info}
        deployments.append(Note(entry, [f"{name} on {host.url}: {why}"]))

    for host in hosts:
        for m in host.models:
            now = "loaded now" if m.state == "loaded" else f"{m.state or 'state unknown'} now"
            why = f"model of provider {m.provider}, {now}; max_concurrency {m.max_concurrency}"
            deploy(host, m.name, why, m.max_concurrency)
    group_alias, per_host = _aliases(hosts)
    for host, alias, model in per_host:
        deploy(host, alias, f"alias of {model} here (hosts disagree on it)", None)
    fallbacks: list[Any] = []
    for host in hosts:
        for r in host.routes:
            why = f"route ({r.strategy}) over {', '.join(r.candidates) or 'nothing'}"
            deploy(host, r.name, why + "; helixd orders and falls back within the host", None)
    for name, candidates, where in _route_fallbacks(hosts):
        fallbacks.append(Note({name: candidates}, [f"route {name} of {where}"]))

    router: dict[str, Any] = {
        "routing_strategy": "simple-shuffle",
        "num_retries": 2,
        "allowed_fails": 1,
        "cooldown_time": COOLDOWN_S,
        "enable_weighted_failover": True,
    }
    if group_alias:
        router["model_group_alias"] = Note(group_alias, ["aliases every host agrees on"])
    if fallbacks:
        router["fallbacks"] = Note(
            fallbacks, ["when no host answers a route, try its candidates on any host"]
        )
    general = {
        "master_key": Note(
            f"os.environ/{MASTER_KEY_ENV}",
            ["the key apps give LiteLLM (it refuses to start without)"],
        ),
        "background_health_checks": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "enable_health_check_routing": True,
    }
    return {
        "model_list": Note(deployments, [f"{len(deployments)} deployments"]),
        "router_settings": Note(
            router,
            [
                "a failed host is retried elsewhere at once, then left out for cooldown_time",
            ],
        ),
        "general_settings": Note(
            general,
            [
                f"health checks go to helixd's /health/{probe}/v1, which answers from its books",
                "and never loads a model; a host whose probe fails is skipped",
            ],
        ),
    }


def _aliases(
    hosts: list[Host],
) -> tuple[dict[str, str], list[tuple[Host, str, str]]]:
    """Aliases every host agrees on (alias → model group) and the rest, per host."""
    targets: dict[str, set[str]] = {}
    names = {m.name for h in hosts for m in h.models} | {r.name for h in hosts for r in h.routes}
    for host in hosts:
        for m in host.models:
            for alias in m.aliases:
                targets.setdefault(alias, set()).add(m.name)
    agreed = {a: t.pop() for a, t in targets.items() if len(t) == 1 and a not in names}
    rest = [
        (host, alias, m.name)
        for host in hosts
        for m in host.models
        for alias in m.aliases
        if alias not in agreed
    ]
    return dict(sorted(agreed.items())), rest


def _route_fallbacks(hosts: list[Host]) -> list[tuple[str, list[str], str]]:
    """Route → its candidates in order (hosts that disagree: the first host's order)."""
    seen: dict[str, tuple[list[str], str]] = {}
    for host in hosts:
        for r in host.routes:
            if r.name not in seen and r.candidates:
                seen[r.name] = (list(r.candidates), host.url)
    return [(name, c, where) for name, (c, where) in seen.items()]


def header(hosts: Iterable[Host], key_env: str | None) -> list[str]:
    """The comment lines at the top of the YAML: what this is, where it came from."""
    lines = [
        f"LiteLLM proxy config (written for litellm {LITELLM_VERSION}) by helixctl export litellm",
        "hosts:",
    ]
    for h in hosts:
        lines.append(f"  {h.url}: {h.source}")
        lines += [f"    note: {n}" for n in h.notes]
    lines.append(f"start it with the key apps will use in ${MASTER_KEY_ENV}")
    if key_env:
        lines[-1] += f" and the helixd endpoints' API key in ${key_env}:"
        lines.append(f"  {MASTER_KEY_ENV}=sk-... {key_env}=... litellm --config THIS_FILE")
    else:
        lines[-1] += " (the endpoints need no key: no --key-env given):"
        lines.append(f"  {MASTER_KEY_ENV}=sk-... litellm --config THIS_FILE")
    return lines


# -- I/O --------------------------------------------------------------------------------


def read_endpoint(url: str, key: str | None) -> Any:
    """``GET URL/v1/models`` with the key as a Bearer token; :class:`ExportError` if not."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"{url}/v1/models", headers=headers)
    # No proxies from the environment: hosts are on the LAN, as helixd's own client.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=READ_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            fix = "pass --key-env VAR with one of its [proxy] api_keys in $VAR"
            if key:
                fix = "the key in the --key-env variable is not one of its [proxy] api_keys"
            raise ExportError(f"{url} refused the API key (401): {fix}") from None
        raise ExportError(f"{url}/v1/models answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ExportError(
            f"cannot reach helixd at {url}: {reason}; is it running, and does its "
            "[proxy] listen take connections from this host?"
        ) from None
    except ValueError:
        raise ExportError(f"{url}/v1/models did not answer JSON; is it a helixd?") from None


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".helixctl-export-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # no secret inside: keys are environment references
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run_litellm(
    ctx: Context,
    urls: Iterable[str],
    key_env: str | None,
    output: str | None,
    local: bool,
    prefer_loaded: bool,
) -> None:
    """``helixctl export litellm``: read the hosts, print or write the config."""
    key = None
    if key_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
            fail(f"--key-env {key_env!r}: expected an environment variable's name", EXIT_USAGE)
        key = os.environ.get(key_env)
        if not key:
            fail(
                f"--key-env {key_env}: ${key_env} is not set; export it with the helixd "
                "endpoints' API key (LiteLLM reads the same variable)",
                EXIT_FAILED,
            )
    hosts: list[Host] = []
    try:
        bases = [endpoint_base(u) for u in urls]
    except ExportError as exc:
        fail(str(exc), EXIT_USAGE)
    if local:
        hosts.append(host_from_control(ctx.call(Status), ctx.call(ListModels)))
    elif not bases:
        fail("nothing to export: name hosts with --host URL (or drop --no-local)", EXIT_USAGE)
    for base in dict.fromkeys(bases):
        if any(h.url == base for h in hosts):
            continue  # this host, already read through its socket
        try:
            hosts.append(host_from_listing(base, read_endpoint(base, key)))
        except ExportError as exc:
            fail(str(exc), EXIT_FAILED)
    config = litellm_config(hosts, key_env, prefer_loaded)
    text = (
        json.dumps(plain(config), indent=2) + "\n"
        if ctx.as_json
        else to_yaml(config, header(hosts, key_env))
    )
    if output is None:
        echo(text, nl=False)
        return
    try:
        write_atomically(output, text)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_FAILED)
    count = len(plain(config)["model_list"])
    summary = {"file": output, "hosts": [h.url for h in hosts], "deployments": count}
    ctx.emit(summary, f"wrote {output}: {count} deployments on {len(hosts)} host(s)")
