"""PERCENTAGE_SPLIT: the hash, its boundaries and its keys, against flag-engine."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from flag_engine.utils.hashing import get_hashed_percentage_for_object_ids
from hypothesis import given, settings
from hypothesis import strategies as st

from membership_pipeline.evaluation import EvaluationTuning
from membership_pipeline.evaluation.hash_texts import HashTexts
from membership_pipeline.evaluation.percentage_split import hashed_percentages, split_members
from membership_pipeline_tests.evaluation.membership_helpers import both_answers, condition, segment


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    segment_key=st.text(min_size=1, max_size=12),
    keys=st.lists(st.text(max_size=80), min_size=1, max_size=40),
    threads=st.sampled_from([1, 2]),
)
def test_percentages_equal_flag_engine(segment_key: str, keys: list[str], threads: int) -> None:
    ours = hashed_percentages(segment_key, HashTexts.from_strings(keys), None, threads)
    theirs = [get_hashed_percentage_for_object_ids([segment_key, key]) for key in keys]
    assert ours.tolist() == theirs


def _bucket(text: str) -> int:
    return int(hashlib.md5(text.encode()).hexdigest(), 16) % 9999


def test_the_rare_value_100_is_rehashed_like_flag_engine() -> None:
    """Bucket 9998 would give exactly 100; flag-engine hashes the ids repeated instead."""
    key = next(f"id-{i}" for i in itertools.count() if _bucket(f"seg,id-{i}") == 9998)
    ours = hashed_percentages("seg", HashTexts.from_strings([key, "other"]))
    assert ours[0] == get_hashed_percentage_for_object_ids(["seg", key])
    assert ours[0] < 100


@pytest.mark.parametrize(
    "threshold", ["0", "0.0001", "25", "50", "99.99", "100", "abc", "nan", " 50 "]
)
def test_split_boundaries(threshold: str) -> None:
    traits = {i: {} for i in range(1, 400)}
    ours, theirs = both_answers(traits, segment(condition("", "PERCENTAGE_SPLIT", threshold)))
    assert ours == theirs
    if threshold == "100":
        assert ours == set(traits)
    if threshold in ("abc", "nan"):
        assert ours == set()


def test_exact_percentage_is_inclusive() -> None:
    """An identity whose percentage equals the threshold is in: flag-engine compares with <=."""
    traits = {i: {} for i in range(1, 50)}
    keys = {i: str(i) for i in traits}
    value = get_hashed_percentage_for_object_ids(["7", "13"])
    ours, theirs = both_answers(
        traits, segment(condition(None, "PERCENTAGE_SPLIT", repr(value))), keys=keys
    )
    assert 13 in ours
    assert ours == theirs


@pytest.mark.parametrize("keys", [None, "id", "mixed"])
def test_hash_key_composite_or_given(keys: str | None) -> None:
    """No key: flag-engine's composite "{environment key}_{identifier}"; else the given key."""
    traits = {i: {} for i in range(1, 300)}
    given_keys = (
        None if keys is None else {i: (str(i) if keys == "id" or i % 2 else "") for i in traits}
    )
    ours, theirs = both_answers(
        traits, segment(condition("", "PERCENTAGE_SPLIT", "40")), keys=given_keys
    )
    assert ours == theirs
    assert 0 < len(ours) < len(traits)


def test_split_on_a_trait_hashes_its_coerced_value() -> None:
    traits = {i: {"bucket": str(i % 17).zfill(3)} for i in range(1, 300)}  # "007" hashes as "7"
    ours, theirs = both_answers(traits, segment(condition("bucket", "PERCENTAGE_SPLIT", "50")))
    assert ours == theirs


def test_scoped_split_equals_whole_split() -> None:
    """Hashing only the identities in scope gives the same members as hashing everyone."""
    traits = {i: {"plan": "pro" if i % 3 else "free"} for i in range(1, 3000)}
    seg = segment(condition("plan", "EQUAL", "pro"), condition("", "PERCENTAGE_SPLIT", "30"))
    whole, theirs = both_answers(traits, seg, tuning=EvaluationTuning(scoped_share=0.0))
    scoped, _ = both_answers(
        traits, seg, tuning=EvaluationTuning(expensive_split_distinct_values=0, scoped_share=2.0)
    )
    assert whole == scoped == theirs


def test_percentages_never_reach_100() -> None:
    texts = HashTexts.from_strings([str(i) for i in range(20_000)])
    percentages = hashed_percentages("1", texts)
    assert np.all((percentages >= 0) & (percentages < 100))


@pytest.mark.parametrize("threshold", [0.0, 0.01, 33.3333, 50.0, 99.99, 100.0])
def test_split_members_decide_buckets_as_percentages_do(threshold: float) -> None:
    """Deciding each bucket once equals comparing every identity's percentage, the re-hashed
    bucket 9998 included."""
    rare = next(f"id-{i}" for i in itertools.count() if _bucket(f"seg,id-{i}") == 9998)
    texts = HashTexts.from_strings([rare, *(str(i) for i in range(30_000))])
    rows = np.arange(0, 30_001, 7)
    for picked in (None, rows):
        expected = hashed_percentages("seg", texts, picked) <= threshold
        assert (split_members("seg", texts, threshold, picked) == expected).all()
