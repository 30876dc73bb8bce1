"""Every compiled kernel, compiled now (or loaded from numba's on-disk cache).

numba compiles a kernel on its first call, about 15 s per machine, then caches it next to its
module. Calling :func:`warm` up front keeps that compile out of a backfill's first step (and out
of timed test waits):

    python -m membership_pipeline.evaluation.kernels    # e.g. while building a container image
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from membership_pipeline.evaluation.bitmaps import bitmap_of_codes, bitmap_where, bitmaps_by_code
from membership_pipeline.evaluation.hash_texts import HashTexts
from membership_pipeline.evaluation.md5_buckets import md5_buckets


def cached() -> bool:
    """Whether numba's on-disk cache holds compiled kernels (then ``warm`` takes a second or
    two, else about a minute on 2 cores: the first run of a checkout)."""
    return any(Path(__file__).with_name("__pycache__").glob("*.nbi"))  # the kernels' modules


def warm() -> float:
    """Compile or load every kernel with the argument types the engine passes; seconds taken."""
    started = time.perf_counter()
    ids = np.arange(3, dtype=np.uint32)
    bitmap_where(ids, np.array([True, False, True]))
    bitmap_of_codes(ids, np.array([0, -1, 0], dtype=np.int32), np.array([True]), False)
    bitmaps_by_code(ids, np.array([0, -1, 0], dtype=np.int32), 1)
    md5_buckets(b"k,", HashTexts.from_strings(["a", "b"]), np.array([1]))
    return time.perf_counter() - started


if __name__ == "__main__":
    print(f"compiled kernels ready in {warm():.1f} s")
