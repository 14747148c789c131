"""Task routing by a classifier model: ask a small model for a label, map it to a model.

The classifier is called like any model (through residency, so it loads on demand and
counts as busy), with a short timeout; anything that goes wrong — a slow or failing
classifier, an answer that names no known label — picks the route's default instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from helixd.config.routes import ClassifierConfig
from helixd.edge.client import Pool, UpstreamIOError
from helixd.proxy.routing import last_user_text
from helixd.scheduler import Residency, ResidencyError

log = logging.getLogger("helixd.proxy")


async def classify(
    pool: Pool,
    residency: Residency,
    classifier_model: str,
    config: ClassifierConfig,
    body: Mapping[str, Any],
) -> tuple[str, str]:
    """``(label, target name)`` for ``body``; the default's target when in doubt."""
    labels = sorted(config.labels)
    messages = [
        # A plain replace, not str.format: braces elsewhere in a prompt (JSON examples) are text.
        {"role": "system", "content": config.prompt.replace("{labels}", ", ".join(labels))},
        {"role": "user", "content": last_user_text(body)},
    ]
    try:
        async with asyncio.timeout(config.timeout_s), residency.lease(classifier_model) as model:
            base = model.adapter.upstream(classifier_model)
            if base is None:
                raise ConnectionError(f"{classifier_model}: its server is gone")
            request = {
                "model": model.adapter.upstream_model(classifier_model),
                "messages": messages,
                "max_tokens": 8,
                "temperature": 0,
            }
            headers = model.adapter.upstream_headers(classifier_model)
            response, _ = await pool.post(
                base + "/v1/chat/completions", json.dumps(request).encode(), headers
            )
            async with response:
                if response.status != 200:
                    raise ConnectionError(f"HTTP {response.status}")
                data = await response.json()
        answer = str(data["choices"][0]["message"]["content"])
    except (
        TimeoutError,
        ResidencyError,
        UpstreamIOError,
        ConnectionError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
    ) as exc:
        log.warning("classifier %s failed (%s); using the default", classifier_model, exc)
        return "", config.default
    for label in labels:
        if re.search(rf"\b{re.escape(label)}\b", answer, re.IGNORECASE):
            return label, config.labels[label]
    return "", config.default
