"""Comparing two stores' published versions of an environment through the read API: the check
that a new execution path (shards, executors) answers exactly as the plain full backfill."""

from __future__ import annotations

import itertools

from membership_pipeline.storage import MembershipStore


def assert_same_answers(a: MembershipStore, b: MembershipStore, env_key: str) -> None:
    """Every read-API answer of the published version of ``env_key`` is the same in both."""
    left, right = a.reader().published(env_key), b.reader().published(env_key)
    assert left.identity_count == right.identity_count
    assert left.universe() == right.universe()
    assert left.segment_keys == right.segment_keys
    assert left.failed_segments == right.failed_segments
    assert left.segment_counts() == right.segment_counts()
    universe = sorted(left.universe())
    probes = sorted({*universe[:3], *universe[-3:], *universe[:: max(len(universe) // 7, 1)], 0})
    for key in left.segment_counts():
        assert left.bitmap(key) == right.bitmap(key), key
        for limit in (1, 7, 1000):
            pages = [left.members(key, None, limit)]
            while pages[-1].next_after is not None and len(pages) < 40:
                pages.append(left.members(key, pages[-1].next_after, limit))
            for page in pages[:6]:
                after = None if page is pages[0] else pages[pages.index(page) - 1].next_after
                assert right.members(key, after, limit) == page
        for seed in (0, 1):
            assert left.sample(key, 5, seed) == right.sample(key, 5, seed)
        for identity in probes:
            assert left.is_member(key, identity) == right.is_member(key, identity)
    for identity in itertools.islice(universe, 0, None, max(len(universe) // 10, 1)):
        assert left.segments_of(identity) == right.segments_of(identity)
