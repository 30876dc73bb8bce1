"""The shard plan (pure): ranges cover exactly the environment's ids, in order, k per shard."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from membership_pipeline.model.shard_plan import (
    CHUNK_INDEX_STRIDE,
    MAX_SHARDS,
    ShardSpec,
    boundaries_of,
    plan_shards,
)


@settings(max_examples=300, deadline=None)
@given(
    ids=st.sets(st.integers(0, 2**32 - 1), max_size=200).map(sorted),
    shard_identities=st.integers(1, 250),
)
def test_shards_cover_every_id_once_with_k_identities_each(ids, shard_identities):
    shards = plan_shards(
        boundaries_of(ids, shard_identities), len(ids), max(ids, default=None), shard_identities
    )
    assert [s.index for s in shards] == list(range(len(shards)))
    assert shards[0].first_id == 0
    for earlier, later in itertools.pairwise(shards):
        assert later.first_id == earlier.last_id + 1  # contiguous: no id falls between shards
    held = [[i for i in ids if s.first_id <= i <= s.last_id] for s in shards]
    assert [len(h) for h in held] == [s.identities for s in shards]
    assert list(itertools.chain.from_iterable(held)) == ids
    assert all(0 < len(h) <= shard_identities for h in held) or ids == []
    assert all(len(h) == shard_identities for h in held[:-1])
    assert len(shards) == max(1, -(-len(ids) // shard_identities))


def test_an_empty_environment_is_one_empty_shard():
    assert plan_shards([], 0, None, 10) == (ShardSpec(0, 0, -1, 0),)


def test_one_identity_shards_and_a_single_shard():
    assert plan_shards([5, 9, 40], 3, 40, 1) == (
        ShardSpec(0, 0, 8, 1),
        ShardSpec(1, 9, 39, 1),
        ShardSpec(2, 40, 40, 1),
    )
    assert plan_shards([5], 3, 40, 1000) == (ShardSpec(0, 0, 40, 3),)


def test_chunk_indexes_of_shards_never_overlap():
    a, b = ShardSpec(0, 0, 9, 10), ShardSpec(1, 10, 19, 10)
    assert b.first_chunk_index - a.first_chunk_index == CHUNK_INDEX_STRIDE
    assert (a.mapping_key, b.mapping_key) == ("shard_0", "shard_1")


@pytest.mark.parametrize(
    ("boundaries", "count", "max_id", "size", "message"),
    [
        ([0], 1, 0, 0, "shard_identities must be at least 1"),
        ([0, 5], 3, 9, 1, "2 boundaries for 3 identities"),
        ([5, 5], 4, 9, 2, "strictly increasing"),
        (list(range(MAX_SHARDS + 1)), MAX_SHARDS + 1, MAX_SHARDS, 1, "use larger shards"),
    ],
)
def test_bad_plans_are_refused_with_the_reason(boundaries, count, max_id, size, message):
    with pytest.raises(ValueError, match=message):
        plan_shards(boundaries, count, max_id, size)


def test_boundaries_of_takes_every_kth_id():
    assert boundaries_of(np.array([3, 4, 8, 20, 21]), 2) == [3, 8, 21]
