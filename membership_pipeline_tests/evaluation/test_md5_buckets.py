"""The compiled MD5 bucket against hashlib: every length, block count, prefix, row selection and
thread count."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from membership_pipeline.evaluation.hash_texts import HashTexts
from membership_pipeline.evaluation.md5_buckets import md5_buckets


def _bucket(data: bytes) -> int:
    return int(hashlib.md5(data).hexdigest(), 16) % 9999


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    prefix=st.binary(max_size=70),
    texts=st.lists(st.text(max_size=150), min_size=1, max_size=60),
    pick_rows=st.booleans(),
)
def test_buckets_equal_hashlib(prefix: bytes, texts: list[str], pick_rows: bool) -> None:
    rows = np.arange(len(texts))[::2] if pick_rows else None
    buckets = md5_buckets(prefix, HashTexts.from_strings(texts), rows)
    chosen = texts if rows is None else [texts[r] for r in rows]
    assert buckets.tolist() == [_bucket(prefix + t.encode()) for t in chosen]


@pytest.mark.parametrize("length", [0, 1, 46, 47, 54, 55, 56, 63, 64, 119, 120, 128, 1000])
def test_every_padding_boundary(length: int) -> None:
    """Messages that end just before, on and after each 64-byte block's length field."""
    texts = ["a" * length, "日" * (length // 3), "b" * length]
    for prefix in (b"", b"1,", b"12345678901234567890,"):
        got = md5_buckets(prefix, HashTexts.from_strings(texts)).tolist()
        assert got == [_bucket(prefix + t.encode()) for t in texts]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_split_large_batches_without_changing_answers(threads: int) -> None:
    texts = HashTexts.from_strings([f"user-{i}" for i in range(120_000)])
    rows = np.arange(0, 120_000, 2)
    whole = md5_buckets(b"42,", texts, threads=threads)
    scoped = md5_buckets(b"42,", texts, rows, threads=threads)
    for i in (0, 60_001, 119_999):
        assert whole[i] == _bucket(f"42,user-{i}".encode())
    assert (scoped == whole[rows]).all()


def test_arrow_strings_with_an_offset_are_read_in_place() -> None:
    """A sliced Arrow array (offset into shared buffers) hashes the slice's own texts."""
    array = pa.array(["x", "first", "second", "third"]).slice(1)
    assert md5_buckets(b"s,", HashTexts.from_strings(array)).tolist() == [
        _bucket(b"s," + t.encode()) for t in ("first", "second", "third")
    ]


def test_null_texts_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot be null"):
        HashTexts.from_strings(pa.array(["a", None]))


@pytest.mark.parametrize("shared", ["", "env_1_1_abcdef_", "é" * 30, "x" * 70])
def test_a_shared_prefix_hashes_as_part_of_every_text(shared: str) -> None:
    """Texts kept behind one shared prefix hash exactly as the whole texts (any block split)."""
    own = ["user-1", "", "日本", "y" * 60]
    split = HashTexts.from_strings(own, shared_prefix=shared)
    whole = HashTexts.from_strings([shared + text for text in own])
    for rows in (None, np.array([3, 0])):
        assert (md5_buckets(b"7,", split, rows) == md5_buckets(b"7,", whole, rows)).all()
    assert [split.text(i) for i in range(len(own))] == [shared + text for text in own]
