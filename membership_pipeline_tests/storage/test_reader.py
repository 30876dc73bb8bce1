"""The read API against the published version: answers, errors, paging, sampling, caching."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.model.errors import (
    NotYetPublished,
    SegmentUnavailable,
    UnknownEnvironment,
    UnknownIdentity,
    UnknownSegment,
    VersionCollected,
)
from membership_pipeline.storage import MembershipReader
from membership_pipeline.storage.chunking import load_chunk
from membership_pipeline.storage.publications import PublicationListener
from membership_pipeline.storage.reader import ChunkCache
from membership_pipeline.storage.tables import bitmap_chunk, environment
from membership_pipeline_tests.storage.conftest import backfill

EVENS = BitMap(range(0, 20_000, 2))
TENS = BitMap(range(0, 20_000, 10))
UNIVERSE = BitMap(range(20_000))


@pytest.fixture
def published(store):
    backfill(
        store, "env", {"evens": EVENS, "tens": TENS}, universe=UNIVERSE, failed={"bad": "bad regex"}
    )
    return store


@contextlib.contextmanager
def count_queries() -> Iterator[list[str]]:
    """Every statement any engine sends while the block runs."""
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's explicit transaction start
            statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def test_count_membership_and_segments_of(published):
    reader = published.reader()
    assert reader.count("env", "evens") == 10_000
    assert reader.is_member("env", "tens", 30)
    assert not reader.is_member("env", "tens", 31)
    assert not reader.is_member("env", "evens", 4_000_000)  # beyond every chunk
    of = reader.segments_of("env", 40)
    assert (of.segments, of.unavailable) == (["evens", "tens"], ["bad"])
    assert reader.segments_of("env", 3).segments == []
    snapshot = reader.published("env")
    assert snapshot.segment_keys == ["bad", "evens", "tens"]
    assert snapshot.segment_counts() == {"evens": 10_000, "tens": 2_000}
    assert snapshot.identity_count == 20_000
    assert snapshot.as_of == published.clock()


def test_members_pages_through_every_chunk_in_id_order(published):
    reader = published.reader()
    assert len(reader.published("env")._entries[("segment", "evens")].chunks) > 4
    seen, after = [], None
    while True:
        page = reader.members("env", "evens", after=after, limit=777)
        seen.extend(page.ids)
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == list(EVENS)
    assert reader.members("env", "tens", after=105, limit=3).ids == [110, 120, 130]
    last = reader.members("env", "tens", after=19_980, limit=5)
    assert (last.ids, last.next_after) == ([19_990], None)
    exact = reader.members("env", "tens", after=19_960, limit=3)
    assert (exact.ids, exact.next_after) == ([19_970, 19_980, 19_990], None)


def test_samples_are_members_distinct_and_reproducible(published):
    reader = published.reader()
    sample = reader.sample("env", "evens", 500, seed=7)
    assert len(set(sample)) == 500 and set(sample) <= set(EVENS)
    assert sample == sorted(sample)
    assert reader.sample("env", "evens", 500, seed=7) == sample
    assert reader.sample("env", "evens", 500, seed=8) != sample
    assert reader.sample("env", "tens", 50_000) == list(TENS)  # n beyond the count: all
    assert reader.sample("env", "tens", 0) == []


def test_bad_questions_get_named_errors(published, store):
    reader = published.reader()
    with pytest.raises(UnknownEnvironment, match="environment 'nope' is not known"):
        reader.count("nope", "evens")
    with pytest.raises(UnknownSegment, match="segment 'nope' is not in environment 'env'"):
        reader.count("env", "nope")
    with pytest.raises(SegmentUnavailable, match="invalid_regex: bad regex"):
        reader.members("env", "bad")
    with pytest.raises(UnknownIdentity, match="identity 20000 is not in environment 'env'"):
        reader.segments_of("env", 20_000)
    with pytest.raises(ValueError, match=r"outside 0\.\.4294967295"):
        reader.is_member("env", "evens", -1)
    with pytest.raises(TypeError, match="identity ids are integers"):
        reader.is_member("env", "evens", "12")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit must be between 1 and 100000"):
        reader.members("env", "evens", limit=0)
    store.claim("fresh", "run-1")
    with pytest.raises(NotYetPublished, match=r"no published membership yet.*running"):
        reader.count("fresh", "evens")


def test_warm_reads_come_from_the_cache(published):
    reader = published.reader()
    reader.is_member("env", "evens", 10)
    reader.segments_of("env", 10)
    with count_queries() as statements:
        for identity in range(0, 100, 2):
            assert reader.is_member("env", "evens", identity)
    assert len(statements) == 50
    assert all("FROM membership_environment" in s for s in statements)  # only the pointer
    cached = MembershipReader(published.database, pointer_ttl=60)
    cached.is_member("env", "evens", 10)
    with count_queries() as statements:
        assert cached.count("env", "evens") == 10_000
        assert cached.is_member("env", "evens", 10)
    assert statements == []


def test_the_chunk_cache_is_bounded_in_bytes(published):
    reader = MembershipReader(published.database, cache_bytes=2_000)
    assert reader.members("env", "evens", limit=100_000).ids == list(EVENS)
    assert 0 < reader.chunks.bytes_cached <= 2_000


def test_many_chunks_are_fetched_by_key_in_one_query(published):
    """Every chunk of the version at once (a delta touching every chunk asks for thousands: on
    PostgreSQL one primary-key probe per key), in any order, each the row its key names."""
    with published.database.reader.connect() as conn:
        stored = {
            (r.version_id, r.kind, r.key, r.chunk_index): r.payload
            for r in conn.execute(sa.select(bitmap_chunk)).all()
        }
    assert len(stored) > 40  # 512-byte chunks: many per bitmap
    wanted = sorted(stored, key=lambda k: (-k[3], k[2]))  # not in the primary key's order
    cache = ChunkCache(published.database, 1 << 20)
    with count_queries() as statements:
        chunks = cache.get(wanted)
    assert len(statements) == 1
    assert chunks == {k: load_chunk(payload) for k, payload in stored.items()}
    evens = BitMap().union(*(c for k, c in chunks.items() if k[2] == "evens"))
    assert evens == EVENS
    missing = (wanted[0][0], "segment", "no-such-segment", 0)
    with pytest.raises(VersionCollected):
        ChunkCache(published.database, 1 << 20).get([wanted[0], missing])


def test_a_reader_never_goes_back_to_an_older_publication(published, store, clock):
    reader = published.reader()
    assert reader.count("env", "evens") == 10_000
    clock.advance(61)
    newer = backfill(store, "env", {"evens": BitMap([2])})
    assert reader.count("env", "evens") == 1
    # A lagging view of the pointer (a replica, a slow transaction) shows an older publication.
    with store.database.writer.begin() as conn:
        conn.execute(
            environment.update().values(
                publication=newer.publication - 1,
                published_version_id=newer.previous_version_id,
            )
        )
    assert reader.count("env", "evens") == 1
    assert reader.published("env").version_id == newer.version_id


def republish_tens(store, clock, *members: int) -> None:
    """A new version (after the cooldown) in which segment "tens" holds ``members``."""
    clock.advance(61)
    backfill(store, "env", {"tens": BitMap(members)})


def test_a_ttl_reader_sees_a_new_publication_after_its_ttl(published, store, clock):
    now = [0.0]
    reader = MembershipReader(store.database, pointer_ttl=5, monotonic=lambda: now[0])
    assert reader.count("env", "tens") == 2_000
    republish_tens(store, clock, 10)
    now[0] = 4.9
    assert reader.count("env", "tens") == 2_000
    now[0] = 5.0
    assert reader.count("env", "tens") == 1


def test_an_announced_publication_is_read_at_once_whatever_the_ttl(published, store, clock):
    now = [0.0]
    reader = MembershipReader(store.database, pointer_ttl=3600, monotonic=lambda: now[0])
    assert reader.count("env", "tens") == 2_000
    republish_tens(store, clock, 10)
    assert reader.count("env", "tens") == 2_000  # within its TTL
    reader.expire("other-env")
    assert reader.count("env", "tens") == 2_000
    reader.expire("env")
    assert reader.count("env", "tens") == 1
    republish_tens(store, clock, 20, 30)
    reader.expire(None)  # every environment (a listener that reconnected)
    assert reader.count("env", "tens") == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_listening_reader_serves_a_flip_within_moments(published, store, clock):
    """The flip's NOTIFY reaches the listener: a reader caching its pointer for an hour serves
    the new version as soon as the flip commits (PostgreSQL)."""
    reader = MembershipReader(store.database, pointer_ttl=3600)
    listener = PublicationListener(store.database.writer, reader.expire).start()
    try:
        assert listener.connected.wait(10)
        assert reader.count("env", "tens") == 2_000
        republish_tens(store, clock, 10)
        deadline = time.monotonic() + 10
        while reader.count("env", "tens") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reader.count("env", "tens") == 1
        clock.advance(61)
        store.rollback("env")  # announced too
        deadline = time.monotonic() + 10
        while reader.count("env", "tens") != 2_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reader.count("env", "tens") == 2_000
    finally:
        listener.close()
    assert not listener.running


def test_a_collected_version_is_reread_from_the_new_publication(published, store, clock):
    reader = published.reader()
    pinned = reader.published("env")
    clock.advance(61)
    backfill(store, "env", {"evens": BitMap([4])}, universe=BitMap([4, 5]))
    store.collect_garbage(keep_retired=0, retired_grace=timedelta(0))
    with pytest.raises(VersionCollected):
        pinned.is_member("evens", 8)
    assert reader.is_member("env", "evens", 4)  # retried on the published version
    assert reader.segments_of("env", 5).segments == []
