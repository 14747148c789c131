"""A request body on its way in: inflated as its ``Content-Encoding`` says, within the
body limit.

aiohttp would inflate a compressed body whole before anyone could look at its size (a
4 MB gzip bomb cost 7.5 s of CPU and 390 MiB), so the endpoint takes bodies as sent and
inflates them here, a bounded chunk at a time.
"""

from __future__ import annotations

import zlib

from helixd.proxy.attempt import Refused

MiB = 1024**2


def too_large(limit_mib: int, inflated: bool = False) -> str:
    """The 413's words: the limit and the key that sets it."""
    once = " once inflated" if inflated else ""
    return f"request body over {limit_mib} MiB{once} ([proxy] max_body_mib)"


# Content-Encoding → zlib's wbits: gzip's header, zlib's (HTTP's "deflate"), none.
WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def inflate(raw: bytes, encoding: str, limit_mib: int) -> bytes:
    """``raw`` decoded as its ``Content-Encoding`` says, inflated a chunk at a time and
    refused once it passes ``limit_mib`` (a bomb costs no more than the limit)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    wbits = WBITS.get(encoding)
    if wbits is None:
        raise Refused(
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none",
            "unsupported_encoding",
        )
    limit = limit_mib * MiB
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise Refused(f"request body is not valid {encoding}: {exc}", "bad_encoding") from None
    if len(body) > limit:
        raise Refused(too_large(limit_mib, inflated=True), "body_too_large")
    if not inflater.eof:
        raise Refused(f"request body is cut short: incomplete {encoding}", "bad_encoding")
    if inflater.unused_data:
        # A second gzip member, or junk: taking only the first would lose data silently.
        raise Refused(f"request body has data after its {encoding} stream ends", "bad_encoding")
    return body
