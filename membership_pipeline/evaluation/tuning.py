"""Knobs that change how fast a backfill is, never what it answers.

Tests set them to extremes so that every code path (scoped hashing, vectorised MD5) is compared
with flag-engine on small inputs, not only on the large inputs where the defaults switch them on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EvaluationTuning:
    # A percentage split over more distinct hash keys than this counts as expensive ...
    expensive_split_distinct_values: int = 4096
    # ... and is hashed only for the identities in scope when they are fewer than this share of
    # the environment. A split's bitmap is never reused by another segment (the segment key is
    # part of the hash), so any narrower scope is worth it.
    scoped_share: float = 1.0
    # Threads hashing a percentage split (None: one per core); a shard step that shares the
    # machine with other shards uses one.
    hash_threads: int | None = None
    # A column of at most this many distinct values, read by at least this many conditions, is
    # split once into one bitmap per value; each condition is then a union of those bitmaps.
    value_bitmaps_max_values: int = 256
    value_bitmaps_min_atoms: int = 3
    # Fewer messages than this per thread are hashed on fewer threads.
    hash_messages_per_thread: int = 20_000
    # PostgreSQL connections reading a shard's rows at once (None: the source's default).
    read_connections: int | None = None


DEFAULT_TUNING = EvaluationTuning()
