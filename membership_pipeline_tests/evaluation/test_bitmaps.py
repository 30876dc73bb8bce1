"""The compiled bitmap construction against pyroaring's own: every container kind (arrays up to
4096 values, bitsets beyond), empty containers skipped, keys far apart, missing codes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

from membership_pipeline.evaluation.bitmaps import (
    bitmap_of,
    bitmap_of_codes,
    bitmap_where,
    bitmaps_by_code,
)


@st.composite
def sorted_ids(draw: st.DrawFn) -> np.ndarray:
    """Sorted distinct uint32 ids, in dense runs (bitset containers) and sparse spreads."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        start = draw(st.integers(0, 2**32 - 70_000))
        if draw(st.booleans()):
            parts.append(np.arange(start, start + draw(st.integers(1, 70_000))))
        else:
            parts.append(start + np.array(draw(st.lists(st.integers(0, 65_535), max_size=50))))
    ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return ids.astype(np.uint32)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(ids=sorted_ids(), share=st.sampled_from([0.0, 0.01, 0.05, 0.5, 1.0]), seed=st.integers(0, 9))
def test_bitmap_where_equals_pyroaring(ids: np.ndarray, share: float, seed: int) -> None:
    mask = np.random.default_rng(seed).random(len(ids)) < share
    assert bitmap_where(ids, mask) == BitMap(ids[mask].tolist())
    assert bitmap_of(ids) == BitMap(ids.tolist())


@settings(max_examples=40, derandomize=True, deadline=None)
@given(ids=sorted_ids(), distinct=st.integers(1, 6), missing=st.booleans(), seed=st.integers(0, 9))
def test_bitmap_of_codes_reads_one_answer_per_code(
    ids: np.ndarray, distinct: int, missing: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, distinct, size=len(ids)).astype(np.int32)
    decided = rng.random(distinct) < 0.5
    expected = [
        int(i) for i, c in zip(ids, codes, strict=True) if (decided[c] if c >= 0 else missing)
    ]
    assert bitmap_of_codes(ids, codes, decided, missing) == BitMap(expected)


def test_a_container_of_exactly_4096_and_4097_values() -> None:
    """The array / bitset boundary of Roaring's format."""
    for count in (4096, 4097):
        ids = (np.arange(count) * 3 + 65_536 * 7).astype(np.uint32)
        built = bitmap_of(ids)
        assert built == BitMap(ids.tolist())
        assert len(built) == count


@settings(max_examples=40, derandomize=True, deadline=None)
@given(ids=sorted_ids(), values=st.integers(1, 40), seed=st.integers(0, 9))
def test_bitmaps_by_code_partition_the_ids(ids: np.ndarray, values: int, seed: int) -> None:
    codes = np.random.default_rng(seed).integers(-1, values, len(ids)).astype(np.int32)
    by_code = bitmaps_by_code(ids, codes, values)
    assert len(by_code) == values + 1
    for code in range(-1, values):
        assert by_code[code + 1] == BitMap(ids[codes == code].tolist())
