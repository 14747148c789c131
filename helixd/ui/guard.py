"""Which browser requests the live view answers: pure checks over a request's headers.

A page on a local port is reachable by every web site its user visits. Three attacks
matter, and each has its check:

- **cross-site requests**: another site's page posts an action to ``127.0.0.1:11400``.
  Actions need an ``Origin`` equal to the page's own and a JSON body (which a cross-site
  form cannot send without a CORS preflight that is never answered); a request a browser
  marks ``Sec-Fetch-Site: cross-site`` is refused outright.
- **DNS rebinding**: ``evil.example`` re-resolves to 127.0.0.1, making the attacker's
  page same-origin with helixd. Its requests still carry ``Host: evil.example``, so
  without API keys only a loopback name or the listen address is accepted as ``Host``.
- **reading the view**: the API keys, when configured, are required for the event stream,
  logs and actions (the endpoint's own check); the page and its scripts hold no secret
  and are served without one, so that the page can ask for the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from helixd.config.proxy import is_loopback

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True)
class Policy:
    """What the endpoint's config says about who may use the page."""

    listen_host: str
    port: int
    keys_required: bool

    def host_allowed(self, host_header: str) -> bool:
        """``Host`` names this endpoint: a loopback name, or the address it listens on."""
        host, port = _split_host(host_header)
        if port is not None and port != self.port:
            return False
        if host in LOOPBACK_NAMES or (host == self.listen_host and host not in WILDCARDS):
            return True
        return is_loopback(host) and is_loopback(self.listen_host)


def refusal(policy: Policy, method: str, path: str, headers: Mapping[str, str]) -> str | None:
    """Why the live view must refuse this request (answered with 403), or None."""
    host = headers.get("Host", "")
    if not policy.keys_required and not policy.host_allowed(host):
        return (
            f"Host {host!r} is not this helixd's address; open the page as "
            f"http://127.0.0.1:{policy.port}/ui/ (names other than loopback ones are refused "
            "so that a rebound DNS name cannot reach helixd; set [proxy] api_keys to allow them)"
        )
    page = path in ("/ui", "/ui/") or path.startswith("/ui/static/")
    if headers.get("Sec-Fetch-Site") == "cross-site" and not (page and method == "GET"):
        return "cross-site requests are refused: use the page helixd serves at /ui/"
    origin = headers.get("Origin")
    if origin is not None and origin != f"http://{host}":
        return f"Origin {origin!r} is not this page's; cross-origin requests are refused"
    if method == "POST":
        if origin is None:
            return "an action needs the Origin header a browser sends; use the page at /ui/"
        if headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return "an action's body must be JSON (Content-Type: application/json)"
    return None


def _split_host(value: str) -> tuple[str, int | None]:
    """``"[::1]:11400"`` → ("::1", 11400); a malformed port gives -1 (never allowed)."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, None
    if port_text is None:
        return host, None
    return host, int(port_text) if port_text.isdigit() else -1
