"""Identity-delta backfills: after any sequence of trait inserts, value updates (the type
changing too), trait deletes, identity creations and deletions, each published by a delta
backfill of the identities it changed, every read answer equals a full backfill of the same
source state; a changed chunk is written as a patch over its payload (or rewritten once its
patch outgrows it), every other chunk is linked; garbage collection and rollback keep every
linked chunk and payload."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from membership_pipeline.model.refresh_mode import RefreshMode, definition_digest
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore, delta_versions
from membership_pipeline.storage.tables import (
    bitmap_chunk,
    identity_answers,
    pending_identity,
    version,
)
from membership_pipeline.storage.tables import (
    environment as environment_table,
)
from membership_pipeline_tests.backfill.conftest import (
    delta_backfill,
    record_changed,
    sharded_backfill,
)
from membership_pipeline_tests.backfill.identity_edits import IDENTITY_EDITS, apply_identity_edit
from membership_pipeline_tests.backfill.segment_edits import apply_edit
from membership_pipeline_tests.backfill.test_incremental_exactness import (
    NO_GRACE,
    answers,
    copy_source,
    fresh_store,
)
from membership_pipeline_tests.membership_answers import assert_same_answers


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.lists(st.sampled_from(sorted(IDENTITY_EDITS)), min_size=0, max_size=4),
        min_size=1,
        max_size=4,
    ),
    chunk_bytes=st.sampled_from([64, 1 << 20]),
    collect_between=st.booleans(),
    seed=st.integers(0, 2**16),
    medium=st.booleans(),  # payloads big enough that changes are patches, else rewrites
    by_identity=st.booleans(),  # previous answers read by identity, else from the chunks
)
def test_delta_equals_full_after_any_identity_writes(
    small_source,
    medium_source,
    tmp_path_factory,
    steps,
    chunk_bytes,
    collect_between,
    seed,
    medium,
    by_identity,
):
    work = tmp_path_factory.mktemp("delta")
    dataset = medium_source if medium else small_source
    source_url, source = copy_source(dataset, work)
    environment = dataset.environments[seed % 2]
    env_key = environment["api_key"]
    rng = random.Random(seed)
    store = fresh_store(work, chunk_bytes)
    sharded_backfill(source, store, env_key, 60)
    if not by_identity:
        forget_answers_by_identity(store, env_key)
    position = itertools.count(1)
    for edits in steps:
        for kind in edits:
            changed = apply_identity_edit(source_url, kind, environment["id"], rng)
            record_changed(store, env_key, changed, next(position))
        pinned = store.reader().published(env_key)
        before = {key: pinned.bitmap(key) for key in pinned.segment_counts()}
        plans = []
        delta_backfill(source, store, env_key, plans=plans)
        assert plans[0].mode == "delta", plans[0].mode_reason
        # Readers of the previous version keep its answers.
        assert {key: pinned.bitmap(key) for key in pinned.segment_counts()} == before
        if collect_between:
            store.collect_garbage(keep_retired=0, retired_grace=NO_GRACE)
        report = store.shard_reports(store.metadata(env_key).published_version_id)[0].report
        if report["delta"]["identities"]:
            assert (report["delta"]["answer_rows_read"] > 0) == by_identity, report["delta"]
        with fresh_store(work, chunk_bytes) as full:
            sharded_backfill(source, full, env_key, 60)
            assert answers(store, env_key) == answers(full, env_key)
            assert_same_answers(store, full, env_key)
            if by_identity:  # the deltas kept the answers by identity exact
                assert answers_by_identity(store, env_key) == answers_by_identity(full, env_key)
        with store.database.reader.connect() as conn:  # the publish cleared what it covered
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(pending_identity)).scalar() == 0
            )
    source.close()
    store.close()


def test_delta_writes_only_changed_chunks_and_survives_gc_and_rollback(small_source, tmp_path):
    source_url, source = copy_source(small_source, tmp_path)
    environment = small_source.environments[0]
    env_key = environment["api_key"]
    store = fresh_store(tmp_path, chunk_bytes=64)  # many small chunks per bitmap
    first = sharded_backfill(source, store, env_key, 50)
    history = {first: answers(store, env_key)}
    rng = random.Random(5)
    # Each step deletes or creates an identity: the universe changes in one chunk of many.
    kinds = ["delete_identity", "create_identity", "delete_identity", "create_identity"]
    for position, kind in enumerate(kinds, start=1):
        changed = apply_identity_edit(source_url, kind, environment["id"], rng)
        record_changed(store, env_key, changed, position)
        latest = delta_backfill(source, store, env_key)
        history[latest] = answers(store, env_key)
        with store.database.reader.connect() as conn:
            row = conn.execute(sa.select(version).where(version.c.version_id == latest)).one()
            links = conn.execute(
                sa.select(sa.func.count()).where(
                    bitmap_chunk.c.version_id == latest, bitmap_chunk.c.payload.is_(None)
                )
            ).scalar()
        assert row.mode == "delta" and row.delta_identity_count == 1
        assert_links_never_chain(store)
        # One identity changed: a few chunks written, most of every rewritten bitmap linked,
        # far fewer bytes written than the version shares.
        assert row.byte_size < row.shared_byte_size, (row.byte_size, row.shared_byte_size)
        assert links > 0
        store.collect_garbage(keep_retired=1, retired_grace=NO_GRACE)
        with fresh_store(tmp_path, 64) as full:
            sharded_backfill(source, full, env_key, 50)
            assert_same_answers(store, full, env_key)
    # Roll back one version: exactly its answers, through links into collected versions.
    kept = sorted(history)[-2]
    store.rollback(env_key)
    assert answers(store, env_key) == history[kept]
    # A delta on a rolled-back-to version would miss the changes the newer one cleared: full.
    record_changed(store, env_key, {1}, 99)
    plans = []
    delta_backfill(source, store, env_key, plans=plans)
    assert plans[0].mode == "full" and "rolled back" in plans[0].mode_reason
    with fresh_store(tmp_path, 64) as full:
        sharded_backfill(source, full, env_key, 50)
        assert_same_answers(store, full, env_key)
    source.close()
    store.close()


@pytest.mark.parametrize("previous", ["by_identity", "cached", "streamed"])
def test_a_delta_patches_changed_chunks_over_the_first_payload(
    medium_source, tmp_path, monkeypatch, previous
):
    """Trait writes of a few identities: each changed chunk is a patch of a few ids over the
    full version's payload, the next delta's patches still name that payload (they accumulate,
    they do not chain), a delta writes a small fraction of a full version's bytes, and readers
    of any of them answer as a full backfill does. Where the previous answers come from:
    ``by_identity``, the answers by identity (no payload read); else the chunks' payloads, from
    the chunk cache (``cached``) or, when they do not fit it, in small batches (``streamed``)."""
    streamed = previous == "streamed"
    source_url, source = copy_source(medium_source, tmp_path)
    environment = medium_source.environments[1]
    env_key = environment["api_key"]
    store = fresh_store(tmp_path)
    if streamed:
        monkeypatch.setattr(delta_versions, "STREAM_BATCH_BYTES", 4096)
        store.close()
        store = MembershipStore(store.url, cache_bytes=1024)
    first = sharded_backfill(source, store, env_key, 1000)
    if previous != "by_identity":
        forget_answers_by_identity(store, env_key)
        assert store.answers_by_identity()[env_key].startswith("none (its deltas read")
    rng = random.Random(11)
    patched = 0
    for position in range(1, 4):
        changed: set[int] = set()
        for _ in range(3):
            changed |= apply_identity_edit(source_url, "update_value", environment["id"], rng)
        record_changed(store, env_key, changed, position)
        latest = delta_backfill(source, store, env_key)
        with store.database.reader.connect() as conn:
            sizes = dict(
                conn.execute(
                    sa.select(version.c.version_id, version.c.byte_size).where(
                        version.c.version_id.in_([first, latest])
                    )
                ).all()
            )
            patch_sources = set(
                conn.execute(
                    sa.select(bitmap_chunk.c.source_version_id).where(
                        bitmap_chunk.c.version_id == latest,
                        bitmap_chunk.c.patch_added.is_not(None),
                    )
                ).scalars()
            )
        assert patch_sources <= {first}, patch_sources
        assert (store.chunks_cache.bytes_cached == 0) == (previous != "cached")
        delta = store.shard_reports(latest)[0].report["delta"]
        assert (delta["payload_bytes_read"] == 0) == (previous == "by_identity"), delta
        patched += len(patch_sources)
        assert sizes[latest] * 20 < sizes[first], sizes
        assert_links_never_chain(store)
        with fresh_store(tmp_path) as full:
            sharded_backfill(source, full, env_key, 1000)
            assert answers(store, env_key) == answers(full, env_key)
            assert_same_answers(store, full, env_key)
    assert patched  # some delta changed a bit
    # Many more changes: patches outgrow their payloads, and those chunks are rewritten whole.
    changed = set()
    for _ in range(120):
        changed |= apply_identity_edit(source_url, "update_value", environment["id"], rng)
    record_changed(store, env_key, changed, 9)
    latest = delta_backfill(source, store, env_key)
    with store.database.reader.connect() as conn:
        rewritten = conn.execute(
            sa.select(sa.func.count()).where(
                bitmap_chunk.c.version_id == latest, bitmap_chunk.c.payload.is_not(None)
            )
        ).scalar()
    assert rewritten
    assert_links_never_chain(store)
    with fresh_store(tmp_path) as full:
        sharded_backfill(source, full, env_key, 1000)
        assert_same_answers(store, full, env_key)
    source.close()
    store.close()


def forget_answers_by_identity(store: MembershipStore, env_key: str) -> None:
    """As a store upgraded from before the answers by identity has them: none describe the
    published version, so deltas read the previous answers from the chunks."""
    with store.database.writer.begin() as conn:
        conn.execute(
            environment_table.update()
            .where(environment_table.c.environment_key == env_key)
            .values(answers_version_id=None)
        )


def segment_digests(source: FlagsmithSource, env_key: str) -> dict[str, str]:
    """Each live segment's definition digest, as the source has it now."""
    return {str(s["key"]): definition_digest(s) for s in source.environment_state(env_key).segments}


def answers_by_identity(store: MembershipStore, env_key: str) -> dict[int, dict[str, bool]]:
    """The live answers by identity, decoded: identity → column key → bit."""
    with store.database.reader.connect() as conn:
        state = conn.execute(
            sa.select(environment_table).where(environment_table.c.environment_key == env_key)
        ).one()
        rows = conn.execute(
            sa.select(identity_answers).where(
                identity_answers.c.environment_key == env_key,
                identity_answers.c.version_id == state.answers_generation_id,
            )
        ).all()
    assert state.answers_version_id == state.published_version_id
    keys, stale = json.loads(state.answers_keys), set(json.loads(state.answers_stale))
    width = (len(keys) + 7) // 8
    decoded: dict[int, dict[str, bool]] = {}
    for row in rows:
        ids = np.frombuffer(row.ids, dtype=np.uint32)
        bits = np.unpackbits(
            np.frombuffer(row.bits, dtype=np.uint8).reshape(-1, width), axis=1, bitorder="little"
        )
        assert row.identity_count == len(ids) and row.first_id == ids[0] == min(ids)
        for identity, answer in zip(ids.tolist(), bits.tolist(), strict=True):
            assert identity not in decoded
            decoded[identity] = {
                key: bool(bit) for key, bit in zip(keys, answer, strict=False) if key not in stale
            }
    return decoded


def assert_links_never_chain(store) -> None:
    """A patched link names a payload; a plain link names a payload or a patched link."""
    target = bitmap_chunk.alias("target")
    with store.database.reader.connect() as conn:
        pairs = conn.execute(
            sa.select(
                bitmap_chunk.c.patch_added.is_not(None).label("patched"),
                target.c.payload.is_not(None).label("to_payload"),
                target.c.patch_added.is_not(None).label("to_patch"),
            ).select_from(
                bitmap_chunk.join(
                    target,
                    sa.and_(
                        target.c.version_id == bitmap_chunk.c.source_version_id,
                        target.c.kind == bitmap_chunk.c.kind,
                        target.c.key == bitmap_chunk.c.key,
                        target.c.chunk_index == bitmap_chunk.c.source_chunk_index,
                    ),
                )
            )
        ).all()
    assert pairs, "no links"
    for patched, to_payload, to_patch in pairs:
        assert to_payload or (to_patch and not patched), (patched, to_payload, to_patch)


@pytest.mark.parametrize("share, expected", [(0.05, "full"), (0.5, "delta")])
def test_delta_naming_too_much_of_the_environment_runs_as_full(
    small_source, tmp_path, share, expected
):
    from membership_pipeline.backfill.planning import plan_backfill
    from membership_pipeline.storage import Claim

    _, source = copy_source(small_source, tmp_path)
    env_key = small_source.environments[0]["api_key"]
    store = fresh_store(tmp_path)
    sharded_backfill(source, store, env_key, 1000)
    ids = sorted(store.reader().published(env_key).universe())[:20]  # of 160: 12.5 %
    record_changed(store, env_key, set(ids), 1)
    held = store.claim(env_key, owner="t", force=True)
    assert isinstance(held, Claim)
    plan = plan_backfill(source, store, held, 1000, mode=RefreshMode.DELTA, delta_max_share=share)
    assert plan.mode == expected
    if expected == "full":
        assert "more than 5%" in plan.mode_reason
    source.close()
    store.close()


def test_deltas_after_segment_edits_read_only_edited_segments_from_chunks(medium_source, tmp_path):
    """A segment edit (an incremental version) leaves the answers by identity describing the
    new version with the re-evaluated segments stale: the next deltas read those segments'
    previous answers from their chunks and every other segment's by identity, and equal a full
    backfill; the next full version makes every column live again."""
    source_url, source = copy_source(medium_source, tmp_path)
    environment = medium_source.environments[0]
    env_key, project = environment["api_key"], environment["project_id"]
    store = fresh_store(tmp_path)
    sharded_backfill(source, store, env_key, 2000)
    rng = random.Random(3)
    for round_ in range(3):
        edited = None
        while edited is None:
            edited = apply_edit(source_url, rng.choice(["edit", "create"]), project, rng)
        plans = []
        incremental = sharded_backfill(
            source, store, env_key, 2000, mode=RefreshMode.INCREMENTAL, plans=plans
        )
        assert plans[0].mode == "incremental", plans[0].mode_reason
        with store.database.reader.connect() as conn:
            state = conn.execute(
                sa.select(environment_table).where(environment_table.c.environment_key == env_key)
            ).one()
        assert state.answers_version_id == incremental
        stale = set(json.loads(state.answers_stale))
        assert str(edited) in stale or str(edited) not in json.loads(state.answers_keys)
        described = store.answers_by_identity()[env_key]
        assert described == (f"live, {len(stale)} segments edited since (read from their chunks)"
                             if stale else "live")  # fmt: skip
        changed: set[int] = set()
        for _ in range(40):
            changed |= apply_identity_edit(source_url, "update_value", environment["id"], rng)
        record_changed(store, env_key, changed, round_ + 1)
        latest = delta_backfill(source, store, env_key)
        delta = store.shard_reports(latest)[0].report["delta"]
        assert delta["answer_rows_read"] > 0, delta
        with fresh_store(tmp_path) as full:
            sharded_backfill(source, full, env_key, 2000)
            assert_same_answers(store, full, env_key)
            mine, theirs = answers_by_identity(store, env_key), answers_by_identity(full, env_key)
            assert mine.keys() == theirs.keys()
            assert all(
                mine[i] == {k: v for k, v in theirs[i].items() if k in mine[i]} for i in mine
            )
    sharded_backfill(source, store, env_key, 2000)
    with store.database.reader.connect() as conn:
        assert (
            conn.execute(
                sa.select(environment_table.c.answers_stale).where(
                    environment_table.c.environment_key == env_key
                )
            ).scalar()
            == "[]"
        )
    source.close()
    store.close()


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(
            st.lists(st.sampled_from(sorted(IDENTITY_EDITS)), min_size=0, max_size=3),
            st.lists(st.sampled_from(["edit", "rename", "delete", "create"]), max_size=2),
        ),
        min_size=1,
        max_size=3,
    ),
    requested=st.sampled_from([RefreshMode.DELTA, RefreshMode.INCREMENTAL]),
    collect_between=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_one_delta_publishes_identity_writes_and_segment_edits_together(
    medium_source, tmp_path_factory, steps, requested, collect_between, seed
):
    """Trait writes and segment edits (edited, renamed, deleted and new segments) since the
    published version are one backfill, one version: the edited segments evaluated on every
    identity (in ranges), the changed identities on every segment; every read answer equals a
    full backfill's, and the answers by identity those of the columns still live."""
    work = tmp_path_factory.mktemp("delta_edits")
    source_url, source = copy_source(medium_source, work)
    environment = medium_source.environments[seed % 2]
    env_key, project = environment["api_key"], environment["project_id"]
    rng = random.Random(seed)
    store = fresh_store(work)
    sharded_backfill(source, store, env_key, 2000)
    position = itertools.count(1)
    for identity_edits, segment_edits in steps:
        pending = False
        for kind in identity_edits:
            changed = apply_identity_edit(source_url, kind, environment["id"], rng)
            record_changed(store, env_key, changed, next(position))
            pending = pending or bool(changed)
        digests = segment_digests(source, env_key)  # as the published version has them
        for kind in segment_edits:
            apply_edit(source_url, kind, project, rng)
        now = segment_digests(source, env_key)
        edited = {key for key, digest in now.items() if digests.get(key) != digest}
        pinned = store.reader().published(env_key)
        before = {key: pinned.bitmap(key) for key in pinned.segment_counts()}
        plans = []
        latest = delta_backfill(
            source, store, env_key, plans=plans, mode=requested, rebuild_range_identities=1000
        )
        [plan] = plans
        if requested is RefreshMode.DELTA or pending:
            assert plan.mode == "delta", plan.mode_reason
            assert set(plan.rebuilt_segments) == edited
            assert set(plan.dropped_segments) == digests.keys() - now.keys()
            report = store.shard_reports(latest)[0].report
            assert report["segments_rebuilt"] == len(plan.rebuilt_segments)
        assert {key: pinned.bitmap(key) for key in pinned.segment_counts()} == before
        if collect_between:
            store.collect_garbage(keep_retired=0, retired_grace=NO_GRACE)
        with fresh_store(work) as full:
            sharded_backfill(source, full, env_key, 2000)
            assert answers(store, env_key) == answers(full, env_key)
            assert_same_answers(store, full, env_key)
            mine, theirs = answers_by_identity(store, env_key), answers_by_identity(full, env_key)
            assert mine.keys() == theirs.keys()
            for i in mine:  # the columns both hold (a deleted segment's is left unread)
                shared = mine[i].keys() & theirs[i].keys()
                assert {k: mine[i][k] for k in shared} == {k: theirs[i][k] for k in shared}
    source.close()
    store.close()


def test_identities_written_while_a_delta_evaluates_its_edits_wait_for_the_next_delta(
    medium_source, tmp_path, monkeypatch
):
    """Identities created and deleted after the delta read its changed identities, before it
    evaluates its segment edits on every identity: the range holding a deleted one is read again
    whole, the version's segments hold only identities its universe holds, and the next delta
    (of the identities then captured) publishes what a full backfill would."""
    source_url, source = copy_source(medium_source, tmp_path)
    environment = medium_source.environments[0]
    env_key, project = environment["api_key"], environment["project_id"]
    store = fresh_store(tmp_path)
    sharded_backfill(source, store, env_key, 2000)
    rng = random.Random(11)
    record_changed(
        store, env_key, apply_identity_edit(source_url, "update_value", environment["id"], rng), 1
    )
    before = segment_digests(source, env_key)
    while segment_digests(source, env_key) == before:
        apply_edit(source_url, "edit", project, rng)
    written: set[int] = set()
    read_identities = source.read_identities

    def then_write(*args, **kwargs):
        found = read_identities(*args, **kwargs)
        for kind in ("create_identity", "delete_identity", "delete_identity"):
            written.update(apply_identity_edit(source_url, kind, environment["id"], rng))
        return found

    monkeypatch.setattr(source, "read_identities", then_write)
    re_read = []
    read_range = source.read_identity_range
    monkeypatch.setattr(
        source, "read_identity_range",
        lambda *a, **k: re_read.append(k.get("known_ids") is None) or read_range(*a, **k),
    )  # fmt: skip
    plans = []
    version = delta_backfill(source, store, env_key, plans=plans, rebuild_range_identities=1000)
    assert plans[0].mode == "delta" and plans[0].rebuilt_segments, plans[0].mode_reason
    assert re_read.count(True) >= 1 and re_read.count(False) >= 1  # a range read again whole
    published = store.reader().published(env_key)
    assert published.version_id == version
    universe = published.universe()
    assert all(published.bitmap(key) <= universe for key in published.segment_counts())
    monkeypatch.undo()
    record_changed(store, env_key, written, 2)
    delta_backfill(source, store, env_key)
    with fresh_store(tmp_path) as full:
        sharded_backfill(source, full, env_key, 2000)
        assert_same_answers(store, full, env_key)
    source.close()
    store.close()
