"""Shadow versions, the publish flip, rollback and garbage collection."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.backfill.staging import stage_membership_result
from membership_pipeline.demo.synthetic import synthetic_environment
from membership_pipeline.evaluation import evaluate_environment
from membership_pipeline.model.errors import InvalidVersion, RollbackUnavailable
from membership_pipeline.storage import BackfillStatus, MembershipStore
from membership_pipeline.storage.tables import bitmap, bitmap_chunk, version
from membership_pipeline_tests.storage.conftest import backfill


def _states(store: MembershipStore) -> dict[int, str]:
    with store.database.reader.connect() as conn:
        return dict(conn.execute(sa.select(version.c.version_id, version.c.state)).all())


def test_a_refresh_keeps_the_prior_version_readable_until_the_flip(store, clock):
    first = backfill(store, "env", {"a": BitMap(range(100)), "b": BitMap([5])})
    reader = store.reader()
    pinned = reader.published("env")
    clock.advance(120)
    held = store.claim("env", "run-2")
    shadow = store.stage(held, as_of=clock.now)
    shadow.add_universe(BitMap(range(1000)))
    shadow.add_segment("a", "A", BitMap(range(0, 1000, 2)))
    shadow.seal(now=clock.now)

    assert store.metadata("env").last_backfill_status is BackfillStatus.RUNNING
    assert store.metadata("env").published_version_id == first.version_id
    assert reader.count("env", "a") == 100
    assert reader.segments_of("env", 5).segments == ["a", "b"]

    publication = store.publish(held, shadow)
    assert publication.previous_version_id == first.version_id
    assert reader.count("env", "a") == 500
    assert reader.published("env").segment_keys == ["a"]
    assert pinned.count("a") == 100  # a pinned snapshot keeps answering from its version
    assert _states(store) == {first.version_id: "retired", publication.version_id: "published"}


def test_a_version_needs_its_universe_and_unique_keys(store):
    held = store.claim("env", "run")
    shadow = store.stage(held, as_of=store.clock())
    shadow.add_segment("a", None, BitMap([1]))
    with pytest.raises(InvalidVersion, match="segment 'a' added twice"):
        shadow.add_segment("a", None, BitMap([2]))
    with pytest.raises(InvalidVersion, match="invalid segment key ''"):
        shadow.add_segment("", None, BitMap([2]))
    with pytest.raises(InvalidVersion, match="has no universe"):
        store.publish(held, shadow)
    assert store.metadata("env").published_version_id is None


def test_large_bitmaps_are_split_into_id_ranges_and_read_back_whole(store):
    members = BitMap(range(0, 3_000_000, 7))
    backfill(store, "env", {"big": members, "small": BitMap([3])})
    with store.database.reader.connect() as conn:
        chunks = conn.execute(
            sa.select(
                bitmap_chunk.c.min_id, bitmap_chunk.c.max_id, sa.func.length(bitmap_chunk.c.payload)
            )
            .where(bitmap_chunk.c.key == "big")
            .order_by(bitmap_chunk.c.chunk_index)
        ).all()
    assert len(chunks) > 100
    assert all(size <= store.chunk_bytes for _, _, size in chunks)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(chunks))
    published = store.reader().published("env")
    assert published.bitmap("big") == members
    assert published.count("big") == len(members)


def test_the_engine_result_round_trips(store):
    synthetic = synthetic_environment(2_000, 40, seed=3)
    segments = [*synthetic.segments]
    segments.append(
        {
            "key": "broken",
            "name": "Broken",
            "rules": [
                {
                    "type": "ALL",
                    "conditions": [{"property": "x", "operator": "REGEX", "value": "("}],
                }
            ],
        }
    )
    result = evaluate_environment(
        synthetic.environment, synthetic.identities, synthetic.traits, segments
    )
    assert result.failures and result.shared_atoms
    held = store.claim(result.environment_key, "run")
    shadow = store.stage(held, as_of=pd.Timestamp("2026-11-23", tz="UTC").to_pydatetime())
    stage_membership_result(shadow, result)
    store.publish(held, shadow)

    published = store.reader().published(result.environment_key)
    assert published.identity_count == len(result.universe)
    assert published.universe() == result.universe
    for key, members in result.segments.items():
        assert published.bitmap(key) == members
        assert published.segment_name(key) == result.segment_names[key]
    assert set(published.failed_segments) == set(result.failures) == {"broken"}
    assert "invalid_regex" in published.failed_segments["broken"]
    with store.database.reader.connect() as conn:
        atoms = conn.execute(
            sa.select(sa.func.count()).select_from(bitmap).where(bitmap.c.kind == "atom")
        ).scalar_one()
    assert atoms == len(result.shared_atoms)


def test_rollback_is_a_flip_to_the_previous_version(store, clock):
    first = backfill(store, "env", {"a": BitMap([1])})
    clock.advance(61)
    second = backfill(store, "env", {"a": BitMap([1, 2])})
    reader = store.reader()
    assert reader.count("env", "a") == 2
    rolled = store.rollback("env")
    assert (rolled.version_id, rolled.previous_version_id) == (first.version_id, second.version_id)
    assert rolled.publication == second.publication + 1
    assert reader.count("env", "a") == 1
    assert store.metadata("env").published_version_id == first.version_id
    assert store.rollback("env", to_version=second.version_id).version_id == second.version_id
    assert reader.count("env", "a") == 2


def test_rollback_refusals_are_named(store, clock):
    with pytest.raises(RollbackUnavailable, match="has no published version"):
        store.rollback("env")
    backfill(store, "env", {"a": BitMap([1])})
    with pytest.raises(RollbackUnavailable, match="has no earlier version kept for rollback"):
        store.rollback("env")
    clock.advance(61)
    store.claim("env", "run-2")
    with pytest.raises(RollbackUnavailable, match="backfill running"):
        store.rollback("env")


def test_garbage_collection_keeps_the_published_and_the_newest_retired(store, clock):
    publications = []
    for round_ in range(5):
        publications.append(backfill(store, "env", {"a": BitMap(range(round_ + 1))}))
        clock.advance(10)
    ids = [p.version_id for p in publications]
    assert (
        store.collect_garbage(keep_retired=2, retired_grace=timedelta(minutes=5)).retired_versions
        == []
    )
    clock.advance(300)
    report = store.collect_garbage(keep_retired=2, retired_grace=timedelta(minutes=5))
    assert report.retired_versions == ids[:2]
    assert report.bytes_freed > 0
    assert _states(store) == {ids[2]: "retired", ids[3]: "retired", ids[4]: "published"}
    with store.database.reader.connect() as conn:
        kept = set(conn.execute(sa.select(bitmap_chunk.c.version_id).distinct()).scalars())
    assert kept == set(ids[2:])
    assert store.reader().count("env", "a") == 5


def test_garbage_collection_removes_abandoned_shadows_only(store, clock):
    backfill(store, "env", {"a": BitMap([1])})
    clock.advance(61)
    crashed = store.claim("env", "run-crashed")
    abandoned = store.stage(crashed, as_of=clock.now)
    abandoned.add_universe(BitMap([1, 2]))
    abandoned.add_segment("a", None, BitMap([1, 2]))
    clock.advance(store.lease.total_seconds() + 1)
    # Still claimed: a running backfill's shadow is not garbage, however old.
    assert store.collect_garbage().abandoned_versions == []
    assert store.reconcile_stale_claims()  # the lease lapsed: the claim fails
    report = store.collect_garbage()
    assert report.abandoned_versions == [abandoned.version_id]
    clock.advance(61)
    live = store.claim("env", "run-live")
    in_progress = store.stage(live, as_of=clock.now)
    in_progress.add_universe(BitMap([2]))
    in_progress.add_segment("a", None, BitMap([2]))
    in_progress.seal(now=clock.now)
    assert store.collect_garbage().abandoned_versions == []
    store.publish(live, in_progress)
    assert store.reader().members("env", "a").ids == [2]
