"""Flagsmith's percentage-split bucket, computed for many hash keys at once.

flag-engine: ``md5(",".join(ids))`` read as a big-endian integer, ``% 9999 / 9998 * 100``; the rare
value of exactly 100 is re-hashed with the ids repeated (``iterations + 1``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from membership_pipeline.evaluation.hash_texts import HashTexts
from membership_pipeline.evaluation.md5_buckets import BUCKETS, md5_buckets

# Every bucket's percentage as flag-engine computes it: b / 9998 * 100 (the last is re-hashed).
_BUCKET_PERCENTAGES = (np.arange(BUCKETS, dtype=np.float64) / 9998) * 100


def hashed_percentages(
    segment_key: str,
    texts: HashTexts,
    rows: np.ndarray | None = None,
    threads: int | None = None,
    messages_per_thread: int = 20_000,
) -> np.ndarray:
    """Percentage in [0, 100) for ``[segment_key, text]`` of every text (or of ``texts[rows]``),
    as flag-engine hashes it."""
    buckets = md5_buckets(f"{segment_key},".encode(), texts, rows, threads, messages_per_thread)
    percentages = _BUCKET_PERCENTAGES[buckets]
    for position, percentage in _rehashed(segment_key, texts, rows, buckets):
        percentages[position] = percentage
    return percentages


def split_members(
    segment_key: str,
    texts: HashTexts,
    threshold: float,
    rows: np.ndarray | None = None,
    threads: int | None = None,
    messages_per_thread: int = 20_000,
) -> np.ndarray:
    """``hashed_percentages(...) <= threshold``, deciding each of the 9,999 buckets once (in
    the same float arithmetic) instead of every identity's percentage."""
    buckets = md5_buckets(f"{segment_key},".encode(), texts, rows, threads, messages_per_thread)
    members = (threshold >= _BUCKET_PERCENTAGES)[buckets]
    for position, percentage in _rehashed(segment_key, texts, rows, buckets):
        members[position] = percentage <= threshold
    return members


def _rehashed(
    segment_key: str, texts: HashTexts, rows: np.ndarray | None, buckets: np.ndarray
) -> Iterator[tuple[int, float]]:
    """The positions whose bucket is 9998 (exactly 100), with flag-engine's re-hashed value."""
    for position in np.flatnonzero(buckets == BUCKETS - 1):
        text = texts.text(int(position if rows is None else rows[position]))
        yield int(position), _percentage_for_ids([segment_key, text], iterations=2)


def _percentage_for_ids(object_ids: list[str], iterations: int) -> float:
    to_hash = ",".join(object_ids * iterations)
    value = int(hashlib.md5(to_hash.encode("utf-8")).hexdigest(), 16) % BUCKETS / 9998 * 100
    return _percentage_for_ids(object_ids, iterations + 1) if value == 100 else value
