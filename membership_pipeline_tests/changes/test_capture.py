"""Change data capture against real logical replication (PostgreSQL, wal_level = logical, the
pgoutput plugin): every kind of identity write reaches the store's pending identities, exactly
once, whatever is killed when; a dropped slot is made anew with a full refresh; a new slot
refreshes only what was read before it; an undecodable message stops capture where it is;
without a publication capture says it is off."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
import sqlalchemy as sa

from membership_pipeline import cli
from membership_pipeline.changes.capture import (
    RECREATED,
    STREAMING,
    UNAVAILABLE,
    CaptureSettings,
    ChangeCapture,
    capture_status,
)
from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.model.errors import UndecodableMessage
from membership_pipeline.sources import change_stream
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.sources.pgoutput import parse_lsn
from membership_pipeline.sources.replication import slot_state
from membership_pipeline.storage import MembershipStore
from membership_pipeline.storage.versions import published_source_xmins
from membership_pipeline_tests.backfill.conftest import delta_backfill, sharded_backfill
from membership_pipeline_tests.backfill.identity_edits import IDENTITY_EDITS, apply_identity_edit
from membership_pipeline_tests.backfill.test_incremental_exactness import answers, fresh_store
from membership_pipeline_tests.captured_source import CapturedSource
from membership_pipeline_tests.membership_answers import assert_same_answers


def live(source: CapturedSource) -> list[EnvironmentInfo]:
    with FlagsmithSource(source.url) as flagsmith:
        return flagsmith.environments()


def capture_once(source: CapturedSource, store: MembershipStore, capture: ChangeCapture):
    tick = capture.look(store.database, lambda: live(source))
    with store.database.writer.begin() as conn:
        tick.save(conn, store.clock())
    capture.confirm(tick)
    return tick


def pending(store: MembershipStore, source: CapturedSource) -> dict[str, set[int]]:
    return {
        e["api_key"]: set(store.pending_identities(e["api_key"]).ids)
        for e in source.dataset.environments
    }


def slot_position(source: CapturedSource) -> int | None:
    engine = sa.create_engine(source.url)
    try:
        with engine.connect() as conn:
            return slot_state(conn, source.settings.slot).confirmed
    finally:
        engine.dispose()


def test_every_identity_write_is_captured_and_published_by_a_delta(
    captured_source: CapturedSource, tmp_path: Path
):
    source, environments = captured_source, captured_source.dataset.environments
    store = fresh_store(tmp_path, chunk_bytes=256)
    with FlagsmithSource(source.url) as flagsmith:
        for environment in environments:
            sharded_backfill(flagsmith, store, environment["api_key"], 50)
    rng = random.Random(11)
    expected: dict[str, set[int]] = defaultdict(set)
    with source.consumer() as capture:
        assert capture_once(source, store, capture).state == STREAMING  # nothing yet
        for kind in sorted(IDENTITY_EDITS) * 2:  # inserts, updates (type too), deletes, ...
            environment = environments[rng.randrange(2)]
            changed = apply_identity_edit(source.url, kind, environment["id"], rng)
            expected[environment["api_key"]] |= changed
        tick = capture_once(source, store, capture)
    assert tick.state == STREAMING and not tick.batch.skipped
    assert pending(store, source) == {e["api_key"]: expected[e["api_key"]] for e in environments}
    assert slot_position(source) == tick.position  # confirmed after the store committed
    assert capture_status(store.database, source.settings.slot).changes_recorded == sum(
        map(len, expected.values())
    )
    with FlagsmithSource(source.url) as flagsmith:
        for environment in environments:
            plans = []
            delta_backfill(flagsmith, store, environment["api_key"], plans=plans)
            assert plans[0].mode == "delta", plans[0].mode_reason
            with fresh_store(tmp_path, 256) as full:
                sharded_backfill(flagsmith, full, environment["api_key"], 50)
                assert answers(store, environment["api_key"]) == answers(
                    full, environment["api_key"]
                )
                assert_same_answers(store, full, environment["api_key"])
    assert pending(store, source) == {e["api_key"]: set() for e in environments}
    store.close()


KILLED_CONSUMER = """
import os, signal, sys
from membership_pipeline.changes.capture import CaptureSettings, ChangeCapture
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.sources.pgoutput import parse_lsn
from membership_pipeline.storage import MembershipStore

source_url, store_url, slot, where = sys.argv[1:5]
store = MembershipStore(store_url)
capture = ChangeCapture(source_url, CaptureSettings(slot=slot, publication=slot))

def live():
    with FlagsmithSource(source_url) as flagsmith:
        return flagsmith.environments()

tick = capture.look(store.database, live)
assert tick.pending, "the test wrote changes before starting this consumer"
if where == "before-record":
    os.kill(os.getpid(), signal.SIGKILL)
with store.database.writer.begin() as conn:
    tick.save(conn, store.clock())
if where == "before-confirm":
    os.kill(os.getpid(), signal.SIGKILL)
capture.confirm(tick)
"""


@pytest.mark.parametrize("where", ["before-record", "before-confirm"])
def test_a_consumer_killed_anywhere_loses_nothing_and_doubles_nothing(
    captured_source: CapturedSource, tmp_path: Path, where: str
):
    source = captured_source
    environment = source.dataset.environments[0]
    env_key = environment["api_key"]
    store = fresh_store(tmp_path)
    with FlagsmithSource(source.url) as flagsmith:
        sharded_backfill(flagsmith, store, env_key, 50)
    rng = random.Random(3)
    changed = set()
    for kind in ("update_value", "delete_trait", "create_identity", "delete_identity"):
        changed |= apply_identity_edit(source.url, kind, environment["id"], rng)
    before = slot_position(source)
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_CONSUMER), source.url, store.url,
         source.settings.slot, where],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert slot_position(source) == before  # never confirmed
    recorded = capture_status(store.database, source.settings.slot)
    if where == "before-record":
        assert recorded is None and not store.pending_identities(env_key).ids
    else:
        assert set(store.pending_identities(env_key).ids) == changed
    # A new consumer resumes: the same identities, recorded once (a repeat is recognised by its
    # position), then the slot confirmed.
    with source.consumer() as capture:
        tick = capture_once(source, store, capture)
        assert tick.batch.already_recorded == (1 if where == "before-confirm" else 0) * 4
        again = capture_once(source, store, capture)
    assert set(store.pending_identities(env_key).ids) == changed
    assert capture_status(store.database, source.settings.slot).changes_recorded == len(changed)
    # Confirmed where it read through (an idle tick moves past WAL other databases wrote).
    assert again.batch.transactions == 0 and slot_position(source) == again.position
    assert again.position >= tick.position
    with FlagsmithSource(source.url) as flagsmith:
        delta_backfill(flagsmith, store, env_key)
        with fresh_store(tmp_path) as full:
            sharded_backfill(flagsmith, full, env_key, 50)
            assert_same_answers(store, full, env_key)
    store.close()


def test_a_dropped_slot_is_made_anew_and_every_environment_refreshed(
    captured_source: CapturedSource, tmp_path: Path
):
    source = captured_source
    store = fresh_store(tmp_path)
    with source.consumer() as capture:
        assert capture_once(source, store, capture).state == STREAMING
        engine = sa.create_engine(source.url)
        with engine.begin() as conn:
            conn.execute(
                sa.text("SELECT pg_drop_replication_slot(:s)"), {"s": source.settings.slot}
            )
        engine.dispose()
        tick = capture_once(source, store, capture)
        assert tick.state == RECREATED
        assert sorted(e.api_key for e in tick.refresh) == sorted(
            e["api_key"] for e in source.dataset.environments
        )
        status = capture_status(store.database, source.settings.slot)
        assert status.state == RECREATED and "was dropped: made anew" in status.describe()
        assert slot_position(source) is not None  # the new slot
        # It streams again from the new slot.
        rng = random.Random(1)
        changed = apply_identity_edit(
            source.url, "update_value", source.dataset.environments[0]["id"], rng
        )
        assert capture_once(source, store, capture).state == STREAMING
    assert set(store.pending_identities(source.dataset.environments[0]["api_key"]).ids) == changed
    store.close()


def test_an_undecodable_message_stops_capture_where_it_is(
    captured_source: CapturedSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """PostgreSQL does not send a corrupt message on demand: the stream's reader is given one
    after the real ones (the only stand-in in these tests)."""
    source = captured_source
    store = fresh_store(tmp_path)
    apply_identity_edit(
        source.url, "update_value", source.dataset.environments[0]["id"], random.Random(2)
    )
    real_peek = change_stream.peek

    def corrupt_after(conn, slot, publication, max_changes):
        messages = list(real_peek(conn, slot, publication, max_changes))
        yield from messages[:-1]
        yield messages[-1][0], b"Q\x00garbage"

    monkeypatch.setattr(change_stream, "peek", corrupt_after)
    before = slot_position(source)
    with source.consumer() as capture, pytest.raises(UndecodableMessage) as stopped:
        capture.look(store.database, lambda: live(source))
    message = str(stopped.value)
    assert "\n" not in message
    assert re.search("cannot decode the 'Q' message at [0-9A-F]+/[0-9A-F]+: ", message), message
    assert slot_position(source) == before and capture_status(store.database) is None
    monkeypatch.setattr(change_stream, "peek", real_peek)
    with source.consumer() as capture:  # a restart resumes there: nothing lost
        assert capture_once(source, store, capture).pending
    store.close()


def test_without_a_publication_capture_is_off_and_says_why(captured_source, tmp_path):
    store = fresh_store(tmp_path)
    settings = CaptureSettings(slot="mp_no_such_slot", publication="mp_no_such_publication")
    with ChangeCapture(captured_source.url, settings) as capture:
        tick = capture.look(store.database, lambda: [])
    assert tick.state == UNAVAILABLE
    assert tick.detail == (
        "publication mp_no_such_publication does not exist on the source (run "
        "`membership capture enable`)"
    )
    with ChangeCapture(f"sqlite:///{tmp_path / 'x.sqlite'}", settings) as capture:
        assert capture.look(store.database, lambda: []).detail == "the source is sqlite"
    store.close()


def test_a_change_the_store_cannot_place_is_said_once_and_skipped(
    captured_source: CapturedSource, tmp_path: Path
):
    """An identity write in an environment that is no longer live: logged once, skipped, and
    capture goes on (the slot moves past it)."""
    import structlog

    source = captured_source
    gone = source.dataset.environments[1]
    engine = sa.create_engine(source.url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE environments_environment SET deleted_at = now() WHERE id = :e"),
            {"e": gone["id"]},
        )
    engine.dispose()
    store = fresh_store(tmp_path)
    apply_identity_edit(source.url, "update_value", gone["id"], random.Random(6))
    kept = apply_identity_edit(
        source.url, "update_value", source.dataset.environments[0]["id"], random.Random(6)
    )
    with source.consumer() as capture, structlog.testing.capture_logs() as events:
        tick = capture_once(source, store, capture)
        again = capture_once(source, store, capture)
    skipped = [e for e in events if e["event"] == "segment_membership.capture.skipped"]
    assert len(skipped) == 1 and f"environment {gone['id']}, not live" in skipped[0]["examples"][0]
    assert tick.state == STREAMING and again.batch.transactions == 0
    assert pending(store, source) == {
        source.dataset.environments[0]["api_key"]: kept,
        gone["api_key"]: set(),
    }
    # Confirmed where the idle tick read through (past WAL other databases wrote meanwhile).
    assert slot_position(source) == again.position >= tick.position
    store.close()


def test_a_slot_another_session_holds_makes_a_tick_that_reads_nothing(
    captured_source: CapturedSource, tmp_path: Path
):
    """Two consumers never read one slot at once (PostgreSQL refuses the second): the tick
    that finds it held says so and saves nothing; the next one reads."""
    import psycopg2
    import psycopg2.extras

    source = captured_source
    store = fresh_store(tmp_path)
    url = sa.engine.make_url(source.url)
    holder = psycopg2.connect(
        host=url.host, port=url.port, user=url.username, dbname=url.database,
        connection_factory=psycopg2.extras.LogicalReplicationConnection,
    )  # fmt: skip
    cursor = holder.cursor()
    cursor.start_replication(
        slot_name=source.settings.slot,
        options={"proto_version": "1", "publication_names": source.settings.publication},
    )
    try:
        with source.consumer() as capture:
            tick = capture.look(store.database, lambda: live(source))
    finally:
        holder.close()
    assert tick.state == "busy" and "is active for PID" in tick.detail
    assert capture_status(store.database) is None  # nothing saved
    with source.consumer() as capture:  # once the holder's session has ended
        states = [capture_once(source, store, capture).state for _ in range(50)]
    assert STREAMING in states and set(states) <= {"busy", STREAMING}
    store.close()


def test_an_idle_slot_moves_past_wal_the_publication_has_nothing_in(
    captured_source: CapturedSource, tmp_path: Path
):
    """Writes to other tables (Dagster's storage, the store, Flagsmith's other tables) make WAL
    the publication ignores: the slot is confirmed past it, so it neither holds that WAL nor
    decodes it again on every tick."""
    source = captured_source
    store = fresh_store(tmp_path)
    with source.consumer() as capture:
        capture_once(source, store, capture)  # the first tick
        engine = sa.create_engine(source.url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE unrelated (id int, payload text)"))
            conn.execute(
                sa.text(
                    "INSERT INTO unrelated SELECT g, repeat('x', 500) "
                    "FROM generate_series(1, 20000) g"
                )
            )
            written = parse_lsn(
                conn.execute(sa.text("SELECT pg_current_wal_lsn()::text")).scalar_one()
            )
        engine.dispose()
        tick = capture_once(source, store, capture)
    assert tick.batch.transactions == 0 and not tick.pending
    assert slot_position(source) >= written
    store.close()


def test_a_new_slot_refreshes_only_the_environments_read_before_it(
    captured_source: CapturedSource, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """`membership capture enable` records the new slot's horizon in the store; capture's first
    tick refreshes the environment published from a read before the slot, not the one
    backfilled after it (the README's order: enable, backfill, capture), whose version holds
    the write committed before the slot that the slot never reports. A delta on top of a
    version holds what that version read: it keeps its base's ``source_xmin``."""
    source, settings = captured_source, captured_source.settings
    before, after = (e["api_key"] for e in source.dataset.environments)
    after_id = source.dataset.environments[1]["id"]
    store = fresh_store(tmp_path)
    with FlagsmithSource(source.url) as flagsmith:
        sharded_backfill(flagsmith, store, before, 50)  # read before the new slot
    written = apply_identity_edit(source.url, "update_value", after_id, random.Random(5))
    names = ["--slot", settings.slot, "--publication", settings.publication]
    urls = ["--store-url", store.url, "--source-url", source.url]
    assert cli.main([*urls, "capture", "disable", *names]) == 0
    assert cli.main([*urls, "capture", "enable", *names]) == 0
    said = capsys.readouterr().out
    assert "capture enabled: " in said and "none backfilled from now on" in said
    enabled = capture_status(store.database, settings.slot)
    assert enabled.state == "enabled" and enabled.slot_horizon is not None
    assert cli.main([*urls, "capture", "enable", *names]) == 0  # again: nothing changes
    assert "capture already enabled" in capsys.readouterr().out
    assert capture_status(store.database, settings.slot).slot_horizon == enabled.slot_horizon
    with FlagsmithSource(source.url) as flagsmith:
        sharded_backfill(flagsmith, store, after, 50)  # read after it
    read = published_source_xmins(store.database)
    assert read[before] < enabled.slot_horizon <= read[after]
    with source.consumer() as capture:
        tick = capture_once(source, store, capture)
    assert [e.api_key for e in tick.refresh] == [before]
    assert "full refresh of 1 of 2 environments" in tick.detail
    assert not tick.pending  # the write before the slot is not in the stream...
    with fresh_store(tmp_path) as full, FlagsmithSource(source.url) as flagsmith:
        sharded_backfill(flagsmith, full, after, 50)  # ...and the version read after it holds it
        assert_same_answers(store, full, after)
    assert written and capture_status(store.database, settings.slot).state == STREAMING
    # A delta keeps what its base read.
    changed = apply_identity_edit(source.url, "update_value", after_id, random.Random(6))
    with source.consumer() as capture:
        assert capture_once(source, store, capture).pending
    with FlagsmithSource(source.url) as flagsmith:
        plans = []
        delta_backfill(flagsmith, store, after, plans=plans)
    assert plans[0].mode == "delta" and changed
    assert published_source_xmins(store.database)[after] == read[after]
    store.close()
