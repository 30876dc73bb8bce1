"""A version published from N shards is bit for bit the plain full backfill's: the universe,
every segment bitmap, the failed segments, and every read-API answer."""

from __future__ import annotations

import random
import shutil
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from membership_pipeline.database.schema import migrate
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore
from membership_pipeline_tests.backfill.conftest import (
    delete_identities,
    plain_backfill,
    sharded_backfill,
)
from membership_pipeline_tests.membership_answers import assert_same_answers


def fresh_store(directory: Path, chunk_bytes: int) -> MembershipStore:
    url = f"sqlite:///{directory / f'store-{uuid.uuid4().hex[:8]}.sqlite'}"
    migrate(url)
    return MembershipStore(url, chunk_bytes=chunk_bytes)


@settings(
    max_examples=14,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    shard_identities=st.one_of(st.sampled_from([1, 2, 3, 160, 10_000]), st.integers(4, 120)),
    chunk_bytes=st.sampled_from([48, 96, 400, 1 << 20]),  # small: chunks span shard edges
    environment=st.sampled_from([0, 1]),
    deleted_share=st.sampled_from([0.0, 0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_sharded_equals_plain_for_random_shards(
    small_source, tmp_path_factory, shard_identities, chunk_bytes, environment, deleted_share, seed
):
    work = tmp_path_factory.mktemp("exact")
    source_url = f"sqlite:///{work / 'flagsmith.sqlite'}"
    shutil.copy(small_source.url.removeprefix("sqlite:///"), work / "flagsmith.sqlite")
    env_key = small_source.environments[environment]["api_key"]
    source = FlagsmithSource(source_url)
    sharded, plain = fresh_store(work, chunk_bytes), fresh_store(work, chunk_bytes)

    def delete_some(plan):  # identities deleted after planning: shards that read fewer, or none
        ids = sorted(source.read_environment(env_key).identities["id"].tolist())
        chosen = random.Random(seed).sample(ids, int(len(ids) * deleted_share))
        delete_identities(source_url, chosen)

    sharded_backfill(
        source, sharded, env_key, shard_identities, between_plan_and_shards=delete_some
    )
    plain_backfill(source, plain, env_key)
    assert_same_answers(sharded, plain, env_key)
    for opened in (sharded, plain, source):
        opened.close()


def test_shard_edges_inside_storage_chunks_on_postgresql(small_source, postgres_url, tmp_path):
    """The same on the PostgreSQL store, with chunks so small that the plain version's chunks
    straddle the shard edges."""
    migrate(postgres_url)
    env_key = small_source.environments[0]["api_key"]
    source = FlagsmithSource(small_source.url)
    with (
        MembershipStore(postgres_url, chunk_bytes=64) as sharded,
        fresh_store(tmp_path, chunk_bytes=64) as plain,
    ):
        version = sharded_backfill(source, sharded, env_key, 17)
        plain_backfill(source, plain, env_key)
        assert_same_answers(sharded, plain, env_key)
        assert len(sharded.shard_reports(version)) == -(-160 // 17)
        assert sharded.reader().published(env_key).version_id == version
    source.close()


@pytest.mark.parametrize("shard_identities", [1, 1000])
def test_an_empty_environment_publishes_an_empty_version(small_source, tmp_path, shard_identities):
    work_url = f"sqlite:///{tmp_path / 'flagsmith.sqlite'}"
    shutil.copy(small_source.url.removeprefix("sqlite:///"), tmp_path / "flagsmith.sqlite")
    env_key = small_source.environments[1]["api_key"]
    source = FlagsmithSource(work_url)
    delete_identities(work_url, source.read_environment(env_key).identities["id"].tolist())
    sharded, plain = fresh_store(tmp_path, 1 << 20), fresh_store(tmp_path, 1 << 20)
    sharded_backfill(source, sharded, env_key, shard_identities)
    plain_backfill(source, plain, env_key)
    assert sharded.reader().published(env_key).identity_count == 0
    assert_same_answers(sharded, plain, env_key)
