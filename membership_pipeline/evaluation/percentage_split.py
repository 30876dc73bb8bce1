"""Flagsmith's percentage-split bucket, computed for many hash keys at once.

flag-engine: ``md5(",".join(ids))`` read as a big-endian integer, ``% 9999 / 9998 * 100``; the rare
value of exactly 100 is re-hashed with the ids repeated (``iterations + 1``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from membership_pipeline.evaluation.md5_batch import EncodedTexts, md5_words

_BUCKETS = 9999
# 2**96, 2**64, 2**32, 1 modulo 9999: the digest's four big-endian words reduce independently.
_WORD_WEIGHTS = np.array([pow(2, 32 * (3 - i), _BUCKETS) for i in range(4)], dtype=np.uint64)


def hashed_percentages(
    segment_key: str,
    texts: EncodedTexts,
    rows: np.ndarray | None = None,
    vectorise_from: int = 512,
    worker_from: int | None = 200_000,
) -> np.ndarray:
    """Percentage in [0, 100) for ``[segment_key, text]`` of every text (or of ``texts[rows]``),
    as flag-engine hashes it."""
    words = md5_words(f"{segment_key},".encode(), texts, rows, vectorise_from, worker_from)
    buckets = np.zeros(len(words), dtype=np.uint64)
    for i in range(4):
        buckets += (words[:, i] % np.uint32(_BUCKETS)).astype(np.uint64) * _WORD_WEIGHTS[i]
    buckets %= np.uint64(_BUCKETS)
    percentages = (buckets.astype(np.float64) / 9998) * 100
    for row in np.flatnonzero(buckets == _BUCKETS - 1):
        text = texts.raw[row if rows is None else rows[row]].decode("utf-8")
        percentages[row] = _percentage_for_ids([segment_key, text], iterations=2)
    return percentages


def _percentage_for_ids(object_ids: list[str], iterations: int) -> float:
    to_hash = ",".join(object_ids * iterations)
    value = int(hashlib.md5(to_hash.encode("utf-8")).hexdigest(), 16) % _BUCKETS / 9998 * 100
    return _percentage_for_ids(object_ids, iterations + 1) if value == 100 else value
