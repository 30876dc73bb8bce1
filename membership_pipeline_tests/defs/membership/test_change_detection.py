"""Change detection on a PostgreSQL Flagsmith source, through the real dispatch sensor: exactly
the changed environments are requested, watermarks survive restarts and advance only with the
queue, and every detection query is a primary-key range scan."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.changes.detection import detect_changes
from membership_pipeline.changes.watermarks import load_watermarks
from membership_pipeline.defs.membership.resources import (
    DispatchPolicyResource,
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.sensors import backfill_dispatch_sensor
from membership_pipeline.demo.dataset import DemoDataset, write_demo_dataset
from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.run_tags import REASON_TAG
from membership_pipeline.model.changes import IDENTITIES, TRAITS
from membership_pipeline.model.errors import InvalidSetting
from membership_pipeline.sources import flagsmith_tables as tables
from membership_pipeline.sources.change_feed import (
    IDENTITY_CHANGES,
    NO_BOUND,
    TRAIT_CHANGES,
    ChangeFeed,
)
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import Claim, MembershipStore

PUBLISHED_AS_OF = datetime(2026, 1, 1, tzinfo=UTC)
LATER = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def source(postgres_url: str) -> DemoDataset:
    """Two organisations, two projects each, two environments per project, on PostgreSQL."""
    return write_demo_dataset(
        postgres_url,
        identities=400,
        organisations=2,
        projects_per_organisation=2,
        environments_per_project=2,
        segments_per_project=8,
        seed=3,
    )


@pytest.fixture
def sensor_resources(source: DemoDataset, store_url: str) -> dict[str, object]:
    store = MembershipStoreResource(url=store_url, cooldown_seconds=0, change_cooldown_seconds=0)
    return {
        "flagsmith": FlagsmithSourceResource(url=source.url),
        "membership_store": store,
        "dispatch_policy": DispatchPolicyResource(launches_per_organisation_per_minute=1000),
    }


def sense(instance: dg.DagsterInstance, resources: dict[str, object]) -> list[str]:
    """One tick; the environments it launched."""
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = backfill_dispatch_sensor(context)
    for request in result.run_requests:
        assert request.tags[REASON_TAG] == "change"
    return sorted(request.partition_key for request in result.run_requests)


def publish_all(store: MembershipStore, source: DemoDataset) -> None:
    for environment in source.environments:
        held = store.claim(environment["api_key"], "old-run", force=True)
        assert isinstance(held, Claim)
        shadow = store.stage(held, as_of=PUBLISHED_AS_OF)
        shadow.add_universe(BitMap([1]))
        store.publish(held, shadow)


def write(source: DemoDataset, *statements: Callable[[sa.Connection], object]) -> None:
    engine = sa.create_engine(source.url)
    with engine.begin() as conn:
        for statement in statements:
            statement(conn)
    engine.dispose()


def next_id(conn: sa.Connection, table: sa.Table) -> int:
    return conn.execute(sa.select(sa.func.max(table.c.id))).scalar_one() + 1


def add_identity(environment_id: int) -> Callable[[sa.Connection], object]:
    def run(conn: sa.Connection) -> None:
        new = next_id(conn, tables.identities)
        conn.execute(
            sa.insert(tables.identities).values(
                id=new, identifier=f"new-{new}", environment_id=environment_id, created_date=LATER
            )
        )

    return run


def add_trait(environment_id: int, key: str = "brand_new_key") -> Callable[[sa.Connection], object]:
    def run(conn: sa.Connection) -> None:
        identity = conn.execute(
            sa.select(sa.func.min(tables.identities.c.id)).where(
                tables.identities.c.environment_id == environment_id
            )
        ).scalar_one()
        conn.execute(
            sa.insert(tables.traits).values(
                id=next_id(conn, tables.traits),
                identity_id=identity,
                trait_key=key,
                value_type="unicode",
                string_value="x",
                created_date=LATER,
            )
        )

    return run


def environments_of(source: DemoDataset, **where: object) -> list[str]:
    return sorted(
        e["api_key"]
        for e in source.environments
        if all(e[key] == value for key, value in where.items())
    )


def test_first_tick_sets_watermarks_then_new_rows_request_their_environment(
    instance, store, source, sensor_resources
):
    publish_all(store, source)
    assert sense(instance, sensor_resources) == []  # sets the watermarks, scans nothing
    marks = load_watermarks(store.database)
    assert marks is not None
    assert marks.tables[IDENTITIES].last_id == marks.tables[IDENTITIES].scan_from > 0
    assert sense(instance, sensor_resources) == []  # nothing changed

    first, second = source.environments[0], source.environments[5]
    write(source, add_identity(first["id"]))
    assert sense(instance, sensor_resources) == [first["api_key"]]
    write(source, add_trait(second["id"]))
    assert sense(instance, sensor_resources) == [second["api_key"]]
    # The overlapping scan sees the trait again: the same window, suppressed by its dedup lock.
    assert sense(instance, sensor_resources) == []
    assert sense(instance, sensor_resources) == []


SEGMENT_EDITS: dict[str, Callable[[int], Callable[[sa.Connection], object]]] = {
    "segment created": lambda project: (
        lambda conn: conn.execute(
            sa.insert(tables.segments).values(
                id=next_id(conn, tables.segments), name="new", project_id=project, created_at=LATER
            )
        )
    ),
    "segment updated": lambda project: (
        lambda conn: conn.execute(
            sa.update(tables.segments)
            .where(tables.segments.c.project_id == project)
            .values(updated_at=LATER + timedelta(days=1))
        )
    ),
    "segment soft-deleted": lambda project: (
        lambda conn: conn.execute(
            sa.update(tables.segments)
            .where(tables.segments.c.id == _first_segment(conn, project))
            .values(deleted_at=LATER + timedelta(days=2))
        )
    ),
    "rule created": lambda project: (
        lambda conn: conn.execute(
            sa.insert(tables.segment_rules).values(
                id=next_id(conn, tables.segment_rules),
                segment_id=_first_segment(conn, project),
                type="ALL",
                created_at=LATER + timedelta(days=3),
            )
        )
    ),
    "condition updated": lambda project: (
        lambda conn: conn.execute(
            sa.update(tables.conditions)
            .where(tables.conditions.c.id == _first_condition(conn, project))
            .values(value="changed", updated_at=LATER + timedelta(days=4))
        )
    ),
    "condition hard-deleted": lambda project: (
        lambda conn: conn.execute(
            sa.delete(tables.conditions).where(
                tables.conditions.c.id == _first_condition(conn, project)
            )
        )
    ),
}


def _first_segment(conn: sa.Connection, project: int) -> int:
    return conn.execute(
        sa.select(sa.func.min(tables.segments.c.id)).where(tables.segments.c.project_id == project)
    ).scalar_one()


def _first_condition(conn: sa.Connection, project: int) -> int:
    rules = sa.select(tables.segment_rules.c.id).where(
        tables.segment_rules.c.segment_id.in_(
            sa.select(tables.segments.c.id).where(tables.segments.c.project_id == project)
        )
    )
    nested = sa.select(tables.segment_rules.c.id).where(tables.segment_rules.c.rule_id.in_(rules))
    return conn.execute(
        sa.select(sa.func.min(tables.conditions.c.id)).where(
            tables.conditions.c.rule_id.in_(rules.union(nested))
        )
    ).scalar_one()


def test_segment_rule_and_condition_changes_request_their_projects_environments(
    instance, store, source, sensor_resources
):
    publish_all(store, source)
    sense(instance, sensor_resources)
    for index, (edit, change) in enumerate(SEGMENT_EDITS.items()):
        project = source.environments[2 * (index % 4)]["project_id"]
        write(source, change(project))
        assert sense(instance, sensor_resources) == environments_of(source, project_id=project), (
            edit
        )
        assert sense(instance, sensor_resources) == [], edit  # seen once


def test_deleted_environments_and_unpublished_ones_are_not_requested(
    instance, store, source, sensor_resources
):
    publish_all(store, source)
    sense(instance, sensor_resources)
    gone, never = source.environments[0], source.environments[1]
    write(
        source,
        lambda conn: conn.execute(
            sa.update(tables.environments)
            .where(tables.environments.c.id == gone["id"])
            .values(deleted_at=LATER)
        ),
        add_trait(gone["id"]),
    )
    assert sense(instance, sensor_resources) == []
    # Never backfilled: discovery requests its first backfill, not change detection.
    with store.database.writer.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM membership_environment WHERE environment_key = :k"),
            {"k": never["api_key"]},
        )
    write(source, add_identity(never["id"]))
    assert sense(instance, sensor_resources) == []


def test_a_restart_between_ticks_loses_nothing(
    instance, store, source, sensor_resources, monkeypatch
):
    publish_all(store, source)
    sense(instance, sensor_resources)
    changed = source.environments[3]
    write(source, add_trait(changed["id"]))
    before = load_watermarks(store.database)

    # The daemon dies while queueing what it detected: nothing queued, watermarks unmoved.
    def crash(self, requests, also=None):
        raise RuntimeError("daemon killed")

    with monkeypatch.context() as patched:
        patched.setattr(DatabaseQueue, "enqueue", crash)
        with pytest.raises(RuntimeError):
            sense(instance, sensor_resources)
    assert load_watermarks(store.database) == before
    assert DatabaseQueue(store.database).pending() == []

    # A new process (fresh resources, a new store connection) detects it again.
    restarted = {
        **sensor_resources,
        "membership_store": MembershipStoreResource(
            url=sensor_resources["membership_store"].url,
            cooldown_seconds=0,
            change_cooldown_seconds=0,
        ),
    }
    assert sense(instance, restarted) == [changed["api_key"]]
    assert load_watermarks(store.database) != before


def test_a_queued_change_waits_for_the_guard_across_restarts(
    instance, store, source, sensor_resources
):
    """Detected while the environment is running: deferred, kept in the queue (the watermarks
    moved on), launched by a later tick of another process once the claim is released."""
    publish_all(store, source)
    sense(instance, sensor_resources)
    busy = source.environments[4]
    claim = store.claim(busy["api_key"], "a-running-run", force=True)
    assert isinstance(claim, Claim)
    write(source, add_identity(busy["id"]))
    assert sense(instance, sensor_resources) == []
    assert [r.environment for r in DatabaseQueue(store.database).pending()] == [busy["api_key"]]
    store.fail(claim, "test: released")
    restarted = {
        **sensor_resources,
        "membership_store": MembershipStoreResource(
            url=sensor_resources["membership_store"].url,
            cooldown_seconds=0,
            change_cooldown_seconds=0,
        ),
    }
    assert sense(instance, restarted) == [busy["api_key"]]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_detection_queries_are_primary_key_range_scans(source, store):
    """EXPLAIN on real statistics: index or primary-key scans, never a sequential scan of
    the identity or trait table, for the watermark queries and the change scans."""
    engine = sa.create_engine(source.url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in (IDENTITIES, TRAITS):
            conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
    marks = ChangeFeed(engine).current()
    plans = {}
    with engine.connect() as conn:
        for table in (IDENTITIES, TRAITS):
            plans[f"max {table}"] = _plan(conn, f"SELECT max(id) FROM {table}", {})
        for name, query in (("identities", IDENTITY_CHANGES), ("traits", TRAIT_CHANGES)):
            mark = marks.tables[IDENTITIES if name == "identities" else TRAITS]
            params = {"scan_from": mark.scan_from - 50, "last_id": mark.last_id, "upto": NO_BOUND}
            plans[name] = _plan(conn, query, params)
    engine.dispose()
    for name, plan in plans.items():
        for table in (IDENTITIES, TRAITS):
            assert f"Seq Scan on {table}" not in plan, f"{name}:\n{plan}"
        assert "Index" in plan, f"{name}:\n{plan}"


def _plan(conn: sa.Connection, query: str, params: dict[str, int]) -> str:
    rows = conn.execute(sa.text(f"EXPLAIN {query}"), params).scalars()
    return "\n".join(rows)


def test_a_row_committed_late_below_the_watermark_is_still_seen(
    instance, store, source, sensor_resources
):
    """A transaction that took its id before another one, but committed after the tick that saw
    the other: the next tick's scan starts at the previous watermark, so it is found."""
    publish_all(store, source)
    sense(instance, sensor_resources)
    early, late = source.environments[6], source.environments[7]

    def trait_with_id(environment_id: int, offset: int) -> Callable[[sa.Connection], object]:
        def run(conn: sa.Connection) -> None:
            identity = conn.execute(
                sa.select(sa.func.min(tables.identities.c.id)).where(
                    tables.identities.c.environment_id == environment_id
                )
            ).scalar_one()
            top = conn.execute(sa.select(sa.func.max(tables.traits.c.id))).scalar_one()
            conn.execute(
                sa.insert(tables.traits).values(
                    id=top + offset,
                    identity_id=identity,
                    trait_key=f"late_{offset}",
                    value_type="unicode",
                    string_value="x",
                    created_date=LATER,
                )
            )

        return run

    write(source, trait_with_id(early["id"], 2))  # id top + 2 commits first
    assert sense(instance, sensor_resources) == [early["api_key"]]
    write(source, trait_with_id(late["id"], -1))  # then id (top + 2) - 1: below the watermark
    assert sense(instance, sensor_resources) == [late["api_key"]]


def test_a_bulk_import_is_caught_up_over_ticks_of_bounded_scans(
    instance, store, source, sensor_resources
):
    """No tick looks at more than ``detection_rows_per_tick`` new rows per table: seven new
    traits, three per tick, take three ticks, each requesting the environments of its own rows,
    and the watermark advances by the bound until it reaches the table's end."""
    bounded = {**sensor_resources, "flagsmith": FlagsmithSourceResource(
        url=source.url, detection_rows_per_tick=3)}  # fmt: skip
    publish_all(store, source)
    sense(instance, bounded)
    start = _trait_mark(store)
    first, second = source.environments[1], source.environments[6]
    write(
        source,
        *[add_trait(first["id"], f"bulk_{n}") for n in range(3)],
        *[add_trait(second["id"], f"bulk_{n}") for n in range(4)],
    )

    assert sense(instance, bounded) == [first["api_key"]]  # only the first three rows
    assert _trait_mark(store) == start + 3
    assert sense(instance, bounded) == [second["api_key"]]
    assert _trait_mark(store) == start + 6
    # The seventh row: the second environment again, suppressed by its dedup lock.
    assert sense(instance, bounded) == []
    assert _trait_mark(store) == start + 7
    assert sense(instance, bounded) == []
    assert _trait_mark(store) == start + 7
    with pytest.raises(InvalidSetting, match=r"MEMBERSHIP_DETECTION_ROWS_PER_TICK.*got 0"):
        ChangeFeed(sa.create_engine(source.url), rows_per_tick=0)


def _trait_mark(store: MembershipStore) -> int:
    marks = load_watermarks(store.database)
    assert marks is not None
    return marks.tables[TRAITS].last_id


def test_while_capture_carries_the_changes_no_row_is_scanned_and_nothing_is_lost(store, source):
    """Capturing: the identity and trait tables are looked at by ``max(id)`` only, and the
    watermarks move past their rows; once capture stops, the next scan still starts at the
    previous highest id, so a row that was new at the handover is seen."""
    statements: list[str] = []
    with FlagsmithSource(source.url) as flagsmith:
        sa.event.listen(
            flagsmith.engine,
            "before_cursor_execute",
            lambda conn, cursor, statement, *rest: statements.append(statement),
        )
        first = detect_changes(flagsmith, store.database)  # the first look: watermarks only
        with store.database.writer.begin() as conn:
            first.save(conn, LATER)
        environment = source.environments[3]
        write(source, add_trait(environment["id"]))
        statements.clear()
        carried = detect_changes(flagsmith, store.database, carried_by_capture=True)
        assert carried.changes is None and not carried.anything
        assert not [s for s in statements if "unseen" in s], statements
        assert any("max(id)" in s and TRAITS in s for s in statements), statements
        before = first.keep.tables[TRAITS].last_id
        assert carried.keep.tables[TRAITS].last_id == before + 1
        assert carried.keep.tables[TRAITS].scan_from == before
        with store.database.writer.begin() as conn:
            carried.save(conn, LATER)

        resumed = detect_changes(flagsmith, store.database)
    assert resumed.changes is not None
    assert set(resumed.changes.traits) == {environment["id"]}
    assert resumed.keep.tables[TRAITS].last_id == before + 1
