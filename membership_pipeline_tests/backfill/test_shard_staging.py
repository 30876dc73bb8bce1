"""Staging shards into one shadow version, on SQLite and PostgreSQL: retried attempts replace
what earlier ones wrote, stale attempts cannot write, sealing needs every shard."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from membership_pipeline.backfill.planning import plan_backfill
from membership_pipeline.backfill.shards import compute_shard
from membership_pipeline.backfill.staging import stage_shard
from membership_pipeline.database.schema import migrate
from membership_pipeline.model.errors import ClaimLost, InvalidVersion
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import Claim, MembershipStore
from membership_pipeline.storage.tables import bitmap_chunk, shard
from membership_pipeline_tests.backfill.conftest import plain_backfill
from membership_pipeline_tests.membership_answers import assert_same_answers


@pytest.fixture
def store(database_url):
    migrate(database_url)
    with MembershipStore(database_url, chunk_bytes=64) as opened:
        yield opened


@pytest.fixture
def source(small_source):
    opened = FlagsmithSource(small_source.url)
    yield opened
    opened.close()


@pytest.fixture
def env_key(small_source):
    return small_source.environments[0]["api_key"]


def planned(store, source, env_key, shard_identities=40):
    held = store.claim(env_key, owner="run-1", force=True)
    assert isinstance(held, Claim)
    return held, plan_backfill(source, store, held, shard_identities)


def chunk_rows(store, version_id):
    with store.database.reader.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).where(bitmap_chunk.c.version_id == version_id)
        ).scalar_one()


def assert_answers_as_plain(store, source, env_key, tmp_path):
    url = f"sqlite:///{tmp_path / 'plain.sqlite'}"
    migrate(url)
    with MembershipStore(url, chunk_bytes=64) as plain:
        plain_backfill(source, plain, env_key)
        assert_same_answers(store, plain, env_key)


def test_a_retried_shard_replaces_what_the_failed_attempt_wrote(store, source, env_key, tmp_path):
    """Exact too: the published answers equal the plain backfill's."""
    held, plan = planned(store, source, env_key)
    outcomes = [
        compute_shard(source, plan, s, audit_sample_size=5, audit_seed=0) for s in plan.shards
    ]
    first_try = store.shard_writer(plan, plan.shards[1])  # writes part of shard 1, then dies
    first_try.add_universe(outcomes[1].result.universe)
    first_try._flush()
    assert chunk_rows(store, plan.version_id) > 0
    reports = [stage_shard(store, outcome) for outcome in outcomes]  # shard 1 is attempt 2
    assert [r["attempt"] for r in reports] == [1, 2, 1, 1]
    totals = store.seal_shards(plan)
    assert chunk_rows(store, plan.version_id) == totals.chunks  # nothing duplicated or left over
    store.publish(held, plan.version_id)
    assert_answers_as_plain(store, source, env_key, tmp_path)


def test_a_stale_attempt_cannot_write_after_a_newer_one_started(store, source, env_key):
    _, plan = planned(store, source, env_key)
    outcome = compute_shard(source, plan, plan.shards[0], audit_sample_size=0, audit_seed=0)
    stale = store.shard_writer(plan, plan.shards[0])
    stage_shard(store, outcome)  # the retry finishes first
    stale.add_universe(outcome.result.universe)
    with pytest.raises(ClaimLost, match="taken over by a newer attempt"):
        stale.finish(now=store.clock(), report={})
    with store.database.reader.connect() as conn:
        row = conn.execute(sa.select(shard).where(shard.c.shard_index == 0)).one()
    assert (row.state, row.attempts) == ("staged", 2)


def test_sealing_needs_every_shard_and_a_failed_claim_discards_them(store, source, env_key):
    held, plan = planned(store, source, env_key)
    stage_shard(
        store, compute_shard(source, plan, plan.shards[0], audit_sample_size=0, audit_seed=0)
    )
    with pytest.raises(InvalidVersion, match=r"shards \[1, 2, 3\] are not staged"):
        store.seal_shards(plan)
    assert store.fail(held, "shard 2 failed")
    with store.database.reader.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(shard)).scalar_one() == 0
    assert chunk_rows(store, plan.version_id) == 0
    with pytest.raises(ClaimLost):
        store.shard_writer(plan, plan.shards[1])
    with pytest.raises(ClaimLost):
        store.load_plan(env_key, "run-1")


def test_a_plan_reads_back_anywhere_by_its_run(store, source, env_key):
    held, plan = planned(store, source, env_key, shard_identities=1000)
    loaded = store.load_plan(env_key, "run-1")
    assert loaded == plan
    assert loaded.claim.token == held.token
    assert loaded.shard("shard_0") == plan.shards[0]
    with pytest.raises(ClaimLost, match="no longer holds its claim"):
        store.load_plan(env_key, "another-run")


def test_shards_that_evaluated_different_definitions_are_refused(store, source, env_key):
    _, plan = planned(store, source, env_key)
    for spec in plan.shards:
        outcome = compute_shard(source, plan, spec, audit_sample_size=0, audit_seed=0)
        if spec.index == 2:
            outcome.result.segments.pop(next(iter(outcome.result.segments)))
        stage_shard(store, outcome)
    with pytest.raises(InvalidVersion, match="is in 3 of 4 shards"):
        store.seal_shards(plan)


def test_one_shard_version_equals_the_plain_one(store, source, env_key, tmp_path):
    held, plan = planned(store, source, env_key, shard_identities=10_000)
    assert len(plan.shards) == 1
    stage_shard(
        store, compute_shard(source, plan, plan.shards[0], audit_sample_size=5, audit_seed=0)
    )
    store.seal_shards(plan)
    store.publish(held, plan.version_id)
    assert_answers_as_plain(store, source, env_key, tmp_path)
