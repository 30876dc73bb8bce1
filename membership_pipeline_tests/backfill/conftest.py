from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from membership_pipeline.backfill.planning import plan_backfill
from membership_pipeline.backfill.shards import compute_shard, expected_identities
from membership_pipeline.backfill.staging import stage_membership_result, stage_shard
from membership_pipeline.demo.dataset import DemoDataset, write_demo_dataset
from membership_pipeline.evaluation import evaluate_environment
from membership_pipeline.model.refresh_mode import RefreshMode
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import Claim, MembershipStore, StagedPlan


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


@pytest.fixture(scope="session")
def medium_source(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    """Two environments of a few thousand identities: segment payloads of hundreds of bytes and
    more, so a delta of a few identities patches chunks instead of rewriting them."""
    url = f"sqlite:///{tmp_path_factory.mktemp('medium') / 'flagsmith.sqlite'}"
    return write_demo_dataset(
        url,
        identities=6000,
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
    mode: RefreshMode = RefreshMode.FULL,
    plans: list[StagedPlan] | None = None,
) -> int:
    """A sharded backfill without Dagster, shard by shard: plan, compute + stage each, seal,
    publish. Returns the published version (and appends the plan to ``plans``)."""
    held = store.claim(env_key, owner=f"test-{uuid.uuid4().hex[:8]}", force=True)
    assert isinstance(held, Claim)
    plan = plan_backfill(
        source,
        store,
        held,
        shard_identities,
        mode=mode,
        incremental_shard_identities=shard_identities,
    )
    if plans is not None:
        plans.append(plan)
    between_plan_and_shards(plan)
    for spec in plan.shards:
        outcome = compute_shard(
            source,
            plan,
            spec,
            audit_sample_size=20,
            audit_seed=0,
            expected_identities=expected_identities(store, plan, spec),
        )
        stage_shard(store, outcome)
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


def delta_backfill(
    source: FlagsmithSource,
    store: MembershipStore,
    env_key: str,
    *,
    plans: list[StagedPlan] | None = None,
    max_share: float = 1.0,
    mode: RefreshMode = RefreshMode.DELTA,
    rebuild_range_identities: int = 10_000,
) -> int:
    """A delta backfill without Dagster: plan (from the pending identities, and any segment
    edits), compute, stage, seal, publish. Returns the published version. ``mode``: what was
    requested (an incremental request with pending identities runs as a delta too)."""
    from membership_pipeline.backfill.delta import compute_delta, stage_delta

    held = store.claim(env_key, owner=f"delta-{uuid.uuid4().hex[:8]}", force=True)
    assert isinstance(held, Claim)
    plan = plan_backfill(source, store, held, 10_000, mode=mode, delta_max_share=max_share)
    if plans is not None:
        plans.append(plan)
    if plan.delta:
        universe = lambda: store.universe(plan.base_version_id)  # noqa: E731
        stage_delta(
            store,
            compute_delta(
                source, plan, audit_sample_size=20, audit_seed=0, base_universe=universe,
                rebuild_range_identities=rebuild_range_identities,
            ),
        )  # fmt: skip
    else:
        for spec in plan.shards:
            stage_shard(
                store, compute_shard(source, plan, spec, audit_sample_size=20, audit_seed=0)
            )
    store.seal_shards(plan)
    return store.publish(held, plan.version_id).version_id


def record_changed(store: MembershipStore, env_key: str, ids: set[int], position: int) -> None:
    """What change data capture records: the changed identities, at a stream position."""
    from membership_pipeline.storage.pending_identities import record_pending

    with store.database.writer.begin() as conn:
        record_pending(conn, [(env_key, i, position) for i in ids], store.clock())
