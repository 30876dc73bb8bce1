"""Incremental backfills: after any sequence of segment edits and incremental backfills, every
answer equals a full backfill of the same source state; readers holding the previous version
keep its answers; garbage collection and rollback never lose a shared chunk."""

from __future__ import annotations

import random
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from membership_pipeline.backfill.shards import IdentitiesChanged
from membership_pipeline.database.schema import migrate
from membership_pipeline.demo.dataset import write_demo_dataset
from membership_pipeline.model.refresh_mode import RefreshMode
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore
from membership_pipeline.storage.tables import bitmap, bitmap_chunk, version
from membership_pipeline_tests.backfill.conftest import delete_identities, sharded_backfill
from membership_pipeline_tests.backfill.segment_edits import EDITS, add_segment, apply_edit
from membership_pipeline_tests.membership_answers import assert_same_answers

NO_GRACE = timedelta()


def fresh_store(directory: Path, chunk_bytes: int = 1 << 20) -> MembershipStore:
    url = f"sqlite:///{directory / f'store-{uuid.uuid4().hex[:8]}.sqlite'}"
    migrate(url)
    return MembershipStore(url, chunk_bytes=chunk_bytes)


def answers(store: MembershipStore, env_key: str) -> dict[str, object]:
    """Every segment's members and name, and the universe, of the published version."""
    published = store.reader().published(env_key)
    return {
        "universe": published.universe(),
        "failed": published.failed_segments,
        "names": {k: published.segment_name(k) for k in published.segment_keys},
        **{key: published.bitmap(key) for key in published.segment_counts()},
    }


def copy_source(small_source, work: Path) -> tuple[str, FlagsmithSource]:
    shutil.copy(small_source.url.removeprefix("sqlite:///"), work / "flagsmith.sqlite")
    url = f"sqlite:///{work / 'flagsmith.sqlite'}"
    return url, FlagsmithSource(url)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.lists(st.sampled_from(sorted(EDITS)), min_size=0, max_size=3), min_size=1, max_size=4
    ),
    shard_identities=st.sampled_from([7, 40, 10_000]),
    chunk_bytes=st.sampled_from([64, 1 << 20]),
    collect_between=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_incremental_equals_full_after_any_edits(
    small_source, tmp_path_factory, steps, shard_identities, chunk_bytes, collect_between, seed
):
    work = tmp_path_factory.mktemp("incremental")
    source_url, source = copy_source(small_source, work)
    environment = small_source.environments[seed % 2]
    env_key, project = environment["api_key"], environment["project_id"]
    rng = random.Random(seed)
    store = fresh_store(work, chunk_bytes)
    sharded_backfill(source, store, env_key, shard_identities)
    for edits in steps:
        for kind in edits:
            apply_edit(source_url, kind, project, rng)
        before = answers(store, env_key)
        pinned = store.reader().published(env_key)
        plans = []
        sharded_backfill(
            source, store, env_key, shard_identities, mode=RefreshMode.INCREMENTAL, plans=plans
        )
        # Readers of the previous version are not affected by the new one.
        assert {key: pinned.bitmap(key) for key in pinned.segment_counts()} == {
            k: v for k, v in before.items() if k not in ("universe", "failed", "names")
        }
        if collect_between:
            store.collect_garbage(keep_retired=0, retired_grace=NO_GRACE)
        with fresh_store(work, chunk_bytes) as full:
            sharded_backfill(source, full, env_key, shard_identities)
            assert answers(store, env_key) == answers(full, env_key)
            assert_same_answers(store, full, env_key)
        assert plans[0].mode == "incremental" or "(more than" in plans[0].mode_reason, plans[
            0
        ].mode_reason
    source.close()
    store.close()


def test_incremental_shares_chunks_and_survives_gc_and_rollback(small_source, tmp_path):
    """One edited segment: the new version writes only that segment's chunks, shares the rest;
    collecting every older version keeps the shared chunks; rolling back across incremental
    versions returns exactly the earlier answers."""
    source_url, source = copy_source(small_source, tmp_path)
    environment = small_source.environments[0]
    env_key, project = environment["api_key"], environment["project_id"]
    store = fresh_store(tmp_path, chunk_bytes=64)
    first = sharded_backfill(source, store, env_key, 50)
    history = {first: answers(store, env_key)}
    rng = random.Random(3)
    for _ in range(3):
        edited = apply_edit(source_url, "edit", project, rng)
        plans = []
        latest = sharded_backfill(
            source, store, env_key, 50, mode=RefreshMode.INCREMENTAL, plans=plans
        )
        history[latest] = answers(store, env_key)
        assert plans[0].mode == "incremental", plans[0].mode_reason
        assert [s["key"] for s in plans[0].segments] == [str(edited)]
        with store.database.reader.connect() as conn:
            written = conn.execute(
                sa.select(bitmap_chunk.c.kind, bitmap_chunk.c.key)
                .where(bitmap_chunk.c.version_id == latest)
                .distinct()
            ).all()
            row = conn.execute(sa.select(version).where(version.c.version_id == latest)).one()
        assert {(k, key) for k, key in written} <= {("segment", str(edited))}
        assert row.mode == "incremental" and row.reevaluated_segment_count == 1
        assert row.reused_segment_count == len(history[latest]["names"]) - 1
        published = store.reader().published(env_key)
        assert published.evaluated_as_of(str(edited)) == published.as_of
        others = [k for k in published.segment_keys if k != str(edited)]
        assert all(published.evaluated_as_of(k) < published.as_of for k in others)

    # Keep nothing for rollback: the shared chunks of the first version must stay.
    report = store.collect_garbage(keep_retired=0, retired_grace=NO_GRACE)
    assert first in report.retired_versions and first in report.still_referenced_versions
    assert answers(store, env_key) == history[latest]
    with fresh_store(tmp_path) as full:
        sharded_backfill(source, full, env_key, 50)
        assert_same_answers(store, full, env_key)

    # Rollback across incremental versions, then collect again: each answer is the earlier one.
    store2 = fresh_store(tmp_path, chunk_bytes=64)
    (tmp_path / "second").mkdir()
    source_url2, source2 = copy_source(small_source, tmp_path / "second")
    first2 = sharded_backfill(source2, store2, env_key, 50)
    kept = {first2: answers(store2, env_key)}
    for _ in range(3):
        apply_edit(source_url2, "edit", project, rng)
        v = sharded_backfill(source2, store2, env_key, 50, mode=RefreshMode.INCREMENTAL)
        kept[v] = answers(store2, env_key)
    for target in sorted(kept)[-2::-1]:
        store2.rollback(env_key, to_version=target)
        store2.collect_garbage(keep_retired=5, retired_grace=NO_GRACE)
        assert answers(store2, env_key) == kept[target]
    for opened in (source, source2, store, store2):
        opened.close()


def test_gc_frees_shared_chunks_once_no_version_uses_them(small_source, tmp_path):
    source_url, source = copy_source(small_source, tmp_path)
    environment = small_source.environments[1]
    env_key, project = environment["api_key"], environment["project_id"]
    store = fresh_store(tmp_path)
    first = sharded_backfill(source, store, env_key, 10_000)
    apply_edit(source_url, "edit", project, random.Random(1))
    sharded_backfill(source, store, env_key, 10_000, mode=RefreshMode.INCREMENTAL)
    assert first in store.collect_garbage(keep_retired=0, retired_grace=NO_GRACE).retired_versions
    # A full backfill shares nothing: once it is published and the incremental one collected,
    # the first version's remaining chunks go too.
    sharded_backfill(source, store, env_key, 10_000)
    report = store.collect_garbage(keep_retired=0, retired_grace=NO_GRACE)
    assert report.still_referenced_versions == [] and report.bytes_freed > 0
    with store.database.reader.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(version).where(
            version.c.version_id == first)).scalar_one() == 0  # fmt: skip
        owners = set(conn.execute(sa.select(bitmap_chunk.c.version_id).distinct()).scalars())
        referenced = set(
            conn.execute(
                sa.select(sa.func.coalesce(bitmap.c.chunk_version_id, bitmap.c.version_id))
            ).scalars()
        )
    assert owners <= referenced  # no orphaned chunk is left
    source.close()
    store.close()


def test_escalates_to_full_when_identities_or_traits_changed(small_source, tmp_path):
    source_url, source = copy_source(small_source, tmp_path)
    environment = small_source.environments[0]
    env_key, project = environment["api_key"], environment["project_id"]
    store = fresh_store(tmp_path)
    sharded_backfill(source, store, env_key, 10_000)
    plans = []
    ids = sorted(source.read_environment(env_key).identities["id"].tolist())
    delete_identities(source_url, ids[:3])
    apply_edit(source_url, "edit", project, random.Random(2))
    sharded_backfill(source, store, env_key, 10_000, mode=RefreshMode.INCREMENTAL, plans=plans)
    assert plans[-1].mode == "full" and "identities changed" in plans[-1].mode_reason

    engine = sa.create_engine(source_url)
    with engine.begin() as conn:  # a new trait of an identity of this environment
        conn.execute(
            sa.text(
                "INSERT INTO environments_trait (id, identity_id, trait_key, value_type, "
                "string_value, created_date) SELECT max(id) + 1, :identity, 'fresh', 'unicode', "
                "'x', CURRENT_TIMESTAMP FROM environments_trait"
            ),
            {"identity": ids[5]},
        )
    engine.dispose()
    sharded_backfill(source, store, env_key, 10_000, mode=RefreshMode.INCREMENTAL, plans=plans)
    assert plans[-1].mode == "full" and "traits of the environment were added" in (
        plans[-1].mode_reason
    )
    # Nothing changed at all: incremental, nothing re-evaluated, everything shared.
    sharded_backfill(source, store, env_key, 10_000, mode=RefreshMode.INCREMENTAL, plans=plans)
    assert plans[-1].mode == "incremental" and plans[-1].segments == []
    source.close()
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("change", ["deleted", "swapped"])
def test_a_shard_that_reads_other_identities_fails_the_incremental_backfill(
    small_source, tmp_path, change, backend, request
):
    """Identities changed between planning and the shard: the shard's count, largest and sum of
    ids disagree with the base version's, and nothing is published. "swapped": one identity
    deleted and one created inside the range, the count and the largest id unchanged. On a
    PostgreSQL source the check runs on the columnar (ADBC) read."""
    if backend == "sqlite":
        source_url, source = copy_source(small_source, tmp_path)
        env = small_source.environments[0]
    else:
        source_url = request.getfixturevalue("postgres_url")
        env = write_demo_dataset(
            source_url, identities=160, organisations=1, projects_per_organisation=1,
            environments_per_project=2, segments_per_project=25,
        ).environments[0]  # fmt: skip
        source = FlagsmithSource(source_url)
    env_key = env["api_key"]
    store = fresh_store(tmp_path)
    sharded_backfill(source, store, env_key, 10_000)
    published = store.reader().published(env_key)

    def change_after_planning(plan):
        assert plan.incremental
        ids = sorted(published.universe())
        delete_identities(source_url, [ids[0]])
        if change == "swapped":
            engine = sa.create_engine(source_url)
            with engine.begin() as conn:
                free = next(i for i in range(ids[-1]) if i not in set(ids))  # below the min
                conn.execute(
                    sa.text(
                        "INSERT INTO environments_identity (id, identifier, environment_id, "
                        "created_date) VALUES (:id, 'late', :env, CURRENT_TIMESTAMP)"
                    ),
                    {"id": free, "env": env["id"]},
                )
            engine.dispose()

    expected = "holds 159 identities" if change == "deleted" else "holds 160 identities"
    with pytest.raises(IdentitiesChanged, match=f"{expected}.*run a full backfill"):
        sharded_backfill(
            source,
            store,
            env_key,
            10_000,
            mode=RefreshMode.INCREMENTAL,
            between_plan_and_shards=change_after_planning,
        )
    assert store.reader().published(env_key).version_id == published.version_id
    source.close()
    store.close()


def test_incremental_on_a_postgresql_source_equals_full(postgres_url, tmp_path):
    """The columnar (ADBC) read: identities taken from the base version with their system
    traits, traits of the edited segments' keys only; every answer the full backfill's."""
    written = write_demo_dataset(
        postgres_url,
        identities=300,
        organisations=1,
        projects_per_organisation=1,
        environments_per_project=2,
        segments_per_project=16,
        seed=9,
    )
    environment = written.environments[1]
    env_key, project = environment["api_key"], environment["project_id"]
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:  # an identity whose system trait overrides its own "plan"
        overridden = conn.execute(
            sa.text(
                "SELECT min(id) FROM environments_identity "
                "WHERE environment_id = :env AND system_traits IS NOT NULL"
            ),
            {"env": environment["id"]},
        ).scalar_one()
        conn.execute(
            sa.text(
                "UPDATE environments_trait SET string_value = 'free', value_type = 'unicode' "
                "WHERE identity_id = :id AND trait_key = 'plan'"
            ),
            {"id": overridden},
        )
    source = FlagsmithSource(postgres_url)
    store = fresh_store(tmp_path)
    sharded_backfill(source, store, env_key, 120)
    rng = random.Random(4)
    for kind in ("plan_segment", "edit", "create", "edit", "delete"):
        if kind == "plan_segment":  # a new segment on the overridden key
            with engine.begin() as conn:
                segment = add_segment(conn, project, "plan", "EQUAL", "enterprise")
        else:
            apply_edit(postgres_url, kind, project, rng)
        plans = []
        sharded_backfill(source, store, env_key, 120, mode=RefreshMode.INCREMENTAL, plans=plans)
        assert plans[0].mode == "incremental", plans[0].mode_reason
        with fresh_store(tmp_path) as full:
            sharded_backfill(source, full, env_key, 120)
            assert_same_answers(store, full, env_key)
        if kind == "plan_segment":
            assert store.reader().is_member(env_key, str(segment), overridden)
    engine.dispose()
    source.close()
    store.close()


def test_sealing_fails_cleanly_when_the_base_version_is_gone(small_source, tmp_path):
    """The base was collected after the shards ran (only by hand: the claim keeps it
    published): sealing names the problem, nothing is published, and a full backfill works."""
    from membership_pipeline.backfill.planning import plan_backfill
    from membership_pipeline.backfill.shards import compute_shard, expected_identities
    from membership_pipeline.backfill.staging import stage_shard
    from membership_pipeline.model.errors import InvalidVersion
    from membership_pipeline.storage import Claim

    source_url, source = copy_source(small_source, tmp_path)
    environment = small_source.environments[0]
    env_key, project = environment["api_key"], environment["project_id"]
    store = fresh_store(tmp_path)
    base = sharded_backfill(source, store, env_key, 10_000)
    apply_edit(source_url, "edit", project, random.Random(5))
    held = store.claim(env_key, owner="incremental", force=True)
    assert isinstance(held, Claim)
    plan = plan_backfill(source, store, held, 10_000, mode=RefreshMode.INCREMENTAL)
    assert plan.incremental and plan.base_version_id == base
    for spec in plan.shards:
        outcome = compute_shard(
            source, plan, spec, audit_sample_size=5, audit_seed=0,
            expected_identities=expected_identities(store, plan, spec),
        )  # fmt: skip
        stage_shard(store, outcome)
    with store.database.writer.begin() as conn:
        conn.execute(version.delete().where(version.c.version_id == base))
    with pytest.raises(InvalidVersion, match=f"builds on version {base}, which is no longer kept"):
        store.seal_shards(plan)
    store.fail(held, "base gone")
    plans = []
    sharded_backfill(source, store, env_key, 10_000, mode=RefreshMode.INCREMENTAL, plans=plans)
    assert plans[0].mode == "full" and "no published version" in plans[0].mode_reason
    with fresh_store(tmp_path) as full:
        sharded_backfill(source, full, env_key, 10_000)
        assert_same_answers(store, full, env_key)
    source.close()
    store.close()
