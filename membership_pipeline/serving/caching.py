"""HTTP caching of the read API's answers, as a flag proxy's cache expects it. Pure (no store).

An answer is determined by the version it was read from, the request (path and query), the
environment's display name and whether the version is reported stale; its ``ETag`` is made from
exactly those, so a client's ``If-None-Match`` can be checked against the version that would
answer now without reading a bitmap. A tag names its version: once a newer version is
published (or the listing's version is collected) it no longer matches, so a cached answer of a
collected version is never confirmed.
"""

from __future__ import annotations

import hashlib
import math


def entity_tag(version_id: int, stale: bool, environment_name: str, path: str, query: str) -> str:
    request = "\x00".join((path, query, environment_name, "stale" if stale else ""))
    digest = hashlib.blake2b(request.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f'"v{version_id}-{digest}"'


def matches(if_none_match: str, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` (weak comparison, as RFC 9110 asks of it)."""
    if if_none_match.strip() == "*":
        return True
    return any(
        candidate.strip().removeprefix("W/") == tag for candidate in if_none_match.split(",")
    )


def cache_control(pointer_ttl: float) -> str:
    """Private (answers need a key), fresh for as long as this service itself may serve a
    version after the next is published (its pointer TTL): a cache adds no staleness the
    service does not already allow; then revalidate with the ETag."""
    seconds = math.floor(pointer_ttl)
    return f"private, max-age={seconds}" if seconds >= 1 else "private, no-cache"
