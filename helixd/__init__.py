"""helixd: a supervisor daemon for local LLM serving on one host."""

from __future__ import annotations

__version__ = "0.1.0"
