from __future__ import annotations

import itertools
import uuid

import pytest
import sqlalchemy as sa

from membership_pipeline.evaluation import evaluate_environment
from membership_pipeline.sharding.shard_backfill import compute_shard, plan_backfill, stage_shard
from membership_pipeline.sources.demo_dataset import DemoDataset, write_demo_dataset
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import Claim, MembershipStore, stage_membership_result


@pytest.fixture(scope="session")
def small_source(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    """Two environments of a few hundred identities, 25 segments (every operator)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sharding') / 'flagsmith.sqlite'}"
    return write_demo_dataset(
        url,
        identities=160,
        organisations=1,
        projects_per_organisation=1,
        environments_per_project=2,
        segments_per_project=25,
    )


def sharded_backfill(
    source: FlagsmithSource,
    store: MembershipStore,
    env_key: str,
    shard_identities: int,
    *,
    between_plan_and_shards=lambda plan: None,
) -> int:
    """A sharded backfill without Dagster, shard by shard: plan, compute + stage each, seal,
    publish. Returns the published version."""
    held = store.claim(env_key, owner=f"test-{uuid.uuid4().hex[:8]}", force=True)
    assert isinstance(held, Claim)
    plan = plan_backfill(source, store, held, shard_identities)
    between_plan_and_shards(plan)
    for spec in plan.shards:
        stage_shard(store, compute_shard(source, plan, spec, audit_sample_size=20, audit_seed=0))
    store.seal_shards(plan)
    return store.publish(held, plan.version_id).version_id


def plain_backfill(source: FlagsmithSource, store: MembershipStore, env_key: str) -> int:
    """The plain full backfill: the whole environment in one evaluation, one shadow version."""
    held = store.claim(env_key, owner=f"plain-{uuid.uuid4().hex[:8]}", force=True)
    assert isinstance(held, Claim)
    snapshot = source.read_environment(env_key)
    result = evaluate_environment(
        snapshot.environment, snapshot.identities, snapshot.traits, snapshot.segments
    )
    shadow = store.stage(held, as_of=snapshot.as_of)
    stage_membership_result(shadow, result)
    return store.publish(held, shadow).version_id


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


def delete_identities(url: str, ids: list[int]) -> None:
    if not ids:
        return
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM environments_trait WHERE identity_id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": ids},
        )
        conn.execute(
            sa.text("DELETE FROM environments_identity WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": ids},
        )
    engine.dispose()
