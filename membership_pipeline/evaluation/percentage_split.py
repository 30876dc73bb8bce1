"""Flagsmith's percentage-split bucket, computed for many hash keys at once.

flag-engine: ``md5(",".join(ids))`` read as a big-endian integer, ``% 9999 / 9998 * 100``; the rare
value of exactly 100 is re-hashed with the ids repeated (``iterations + 1``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from membership_pipeline.evaluation.md5_buckets import BUCKETS, HashTexts, md5_buckets


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
    percentages = (buckets.astype(np.float64) / 9998) * 100
    for row in np.flatnonzero(buckets == BUCKETS - 1):
        text = texts.text(int(row if rows is None else rows[row]))
        percentages[row] = _percentage_for_ids([segment_key, text], iterations=2)
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
    within = threshold >= _BUCKET_PERCENTAGES
    members = within[buckets]
    for row in np.flatnonzero(buckets == BUCKETS - 1):  # flag-engine re-hashes exactly 100
        text = texts.text(int(row if rows is None else rows[row]))
        members[row] = _percentage_for_ids([segment_key, text], iterations=2) <= threshold
    return members


# Every bucket's percentage as flag-engine computes it: b / 9998 * 100 (the last is re-hashed).
_BUCKET_PERCENTAGES = (np.arange(BUCKETS, dtype=np.float64) / 9998) * 100


def _percentage_for_ids(object_ids: list[str], iterations: int) -> float:
    to_hash = ",".join(object_ids * iterations)
    value = int(hashlib.md5(to_hash.encode("utf-8")).hexdigest(), 16) % BUCKETS / 9998 * 100
    return _percentage_for_ids(object_ids, iterations + 1) if value == 100 else value
