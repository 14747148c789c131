"""``[ui]``: the live view (a web page at ``/ui/`` on the endpoint's port).

A page on a local port is reachable by every web site its user visits, so the view is on
by default only where that is safe: the endpoint listens on loopback (the page then
refuses requests whose ``Host`` or ``Origin`` is not its own), or it asks for API keys.
"""

from __future__ import annotations

from helixd.config.proxy import ProxyConfig, is_loopback, split_listen
from helixd.config.types import Strict


class UiConfig(Strict):
    """Whether the page is served, and whether it may change anything."""

    # None: on when the endpoint listens on loopback or requires API keys, else off.
    enabled: bool | None = None
    # Load, unload, pin, unpin, restart a provider and run a job from the page.
    actions: bool = True

    def serves(self, proxy: ProxyConfig) -> bool:
        """The page is served at ``/ui/`` with this endpoint config."""
        if self.enabled is not None:
            return self.enabled
        host, _ = split_listen(proxy.listen)
        return is_loopback(host) or bool(proxy.api_keys)
