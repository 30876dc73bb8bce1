"""The numpy MD5 against hashlib: every length, block count, prefix, row selection and process."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from membership_pipeline.evaluation import md5_workers
from membership_pipeline.evaluation.md5_batch import EncodedTexts, md5_words


def _digest_words(data: bytes) -> list[int]:
    return np.frombuffer(hashlib.md5(data).digest(), dtype=">u4").tolist()


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    prefix=st.binary(max_size=70),
    texts=st.lists(st.text(max_size=150), min_size=1, max_size=60),
    pick_rows=st.booleans(),
)
def test_vectorised_md5_equals_hashlib(prefix: bytes, texts: list[str], pick_rows: bool) -> None:
    encoded = EncodedTexts.from_strings(texts)
    rows = np.arange(len(texts))[::2] if pick_rows else None
    words = md5_words(prefix, encoded, rows, vectorise_from=1, worker_from=None)
    chosen = texts if rows is None else [texts[r] for r in rows]
    assert [list(w) for w in words.tolist()] == [_digest_words(prefix + t.encode()) for t in chosen]


def test_template_path_with_many_equal_length_texts() -> None:
    texts = [f"{i:07d}" for i in range(50_000)]
    encoded = EncodedTexts.from_strings(texts)
    for prefix in (b"1,", b"123,", b"12345678,"):  # prefix words straddle differently
        words = md5_words(prefix, encoded, worker_from=None)
        for i in (0, 1, 31_337, 49_999):
            assert words[i].tolist() == _digest_words(prefix + texts[i].encode())
        assert encoded.has_template(len(prefix))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the worker is only used with two cores")
def test_worker_process_hashes_half_and_agrees() -> None:
    texts = [f"user-{i}" for i in range(30_000)]
    encoded = EncodedTexts.from_strings(texts)
    rows = np.arange(0, 30_000, 3)
    whole = md5_words(b"42,", encoded, worker_from=1)
    scoped = md5_words(b"42,", encoded, rows, worker_from=1)
    assert md5_workers.workers_available(), "the worker was switched off"
    assert md5_workers._Worker._instance is not None
    for i in (0, 15_000, 29_999):
        assert whole[i].tolist() == _digest_words(b"42," + texts[i].encode())
    for j in (0, 5_000, len(rows) - 1):
        assert scoped[j].tolist() == _digest_words(b"42," + texts[rows[j]].encode())
