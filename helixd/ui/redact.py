"""Secrets kept off the page: what a log line shown in a browser must not carry.

A provider's log holds helixd's note of each start with the command line, and a server
may print its own settings; either can hold a key. Lines for the page pass through a
:class:`Redactor` that masks every secret the config names (API keys, provider
environment values, webhook headers, the keys ``api_key_env`` points at) and the value
after any option or variable whose name says key, token, secret or password.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from helixd.config import HelixConfig

MASK = "••••"
# Shorter values are too likely to be ordinary words or numbers to mask everywhere.
MIN_SECRET_LEN = 8
_WORD = r"[\w.-]*(?:key|token|secret|password|passwd)"  # a name that ends so
_NOT_MASKED = r"(?!" + re.escape(MASK) + r")"
# --api-key VALUE, --api-key=VALUE, -token VALUE
_OPTION = re.compile(r"(?i)(?<![\w-])(--?" + _WORD + r"(?:\s+|=))" + _NOT_MASKED + r"(\S+)")
# API_KEY=VALUE, api_key: VALUE, "token": "VALUE"
_ASSIGN = re.compile(
    r"(?i)\b(" + _WORD + r"[\"']?\s*[=:]\s*)([\"']?)" + _NOT_MASKED + r"[^\s\"',}]+"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[\w.~+/=-]+")


class Redactor:
    """Masks known secrets and named ones in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = sorted({s for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
        self._known = re.compile("|".join(map(re.escape, known))) if known else None

    def __call__(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(MASK, text)
        text = _OPTION.sub(lambda m: m.group(1) + MASK, text)
        text = _ASSIGN.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
        return _BEARER.sub(lambda m: m.group(1) + MASK, text)


def config_secrets(config: HelixConfig, environ: Mapping[str, str]) -> set[str]:
    """Every secret value ``config`` names or points at."""
    found = set(config.proxy.api_keys)
    for provider in config.providers.values():
        found.update(provider.env.values())
        if provider.api_key_env:
            found.add(environ.get(provider.api_key_env, ""))
    for job in config.all_jobs.values():
        for hook in getattr(job, "webhooks", ()):
            found.update(hook.headers.values())
    return found
