"""What changed in a Flagsmith database since the last look, at the cost of what changed.

Flagsmith's primary keys only grow, so new identities and traits are the rows above the highest
id seen before: a primary-key range scan of each table, grouped by environment, costs the new
rows whatever the tables' size. Every row is looked at by two consecutive ticks (the scan starts
at the previous tick's highest id, not this one's), so a row whose insert committed after a
higher id was already seen (a transaction open across one tick) is still found.

A tick looks at no more than ``rows_per_tick`` new rows per table and moves its watermark that
far: after a bulk import, or a daemon stopped for a day, detection catches up over several ticks
instead of running one scan longer than the sensor's timeout (measured at 10M identities: 27M
new trait rows, over 3 minutes; each tick gave up and started it again, and the abandoned
scans kept running on the source, four at once). A request is made for each environment the
first batch touches; later batches of rows older than its backfill are stale and dropped.

The segment tables (segments, rules, conditions) are small: each tick reads them whole and folds
each segment's rows (every defining column and stamp of the segment, its versions, its rules at
any depth and their conditions) into a digest per segment, and those into one per project. A
digest changes whenever a segment, rule or condition is created, edited, soft- or hard-deleted,
whatever the stamps say; the segments whose digest changed are the ones a request names.

What this cannot see: a deleted identity or trait (the row is gone, no id grows) and an edited
trait value (Flagsmith stamps a trait only when it is created). The refresh schedule catches
those (see the README).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from membership_pipeline.model.changes import (
    IDENTITIES,
    TRAITS,
    DetectedChanges,
    RowChanges,
    SegmentSignature,
    TableMark,
    Watermarks,
)
from membership_pipeline.model.errors import InvalidSetting
from membership_pipeline.sources.segment_tree import MAX_RULE_DEPTH
from membership_pipeline.structured_logging import get_logger

log = get_logger("changes")


# About 2 s per table on this 2-core machine (1M trait rows with their identities: 3.8 s).
ROWS_PER_TICK = 500_000


class ChangeFeed:
    """Change detection queries on a Flagsmith database (PostgreSQL or SQLite)."""

    def __init__(self, engine: sa.Engine, rows_per_tick: int = ROWS_PER_TICK) -> None:
        if rows_per_tick < 1:
            raise InvalidSetting(
                "detection_rows_per_tick ($MEMBERSHIP_DETECTION_ROWS_PER_TICK) must be at least "
                f"1, got {rows_per_tick}"
            )
        self.engine = engine
        self.rows_per_tick = rows_per_tick

    def current(self) -> Watermarks:
        """The watermarks of now, without looking at any row below them: each table's highest
        id (the last entry of its primary key) and the segment signatures."""
        with self.engine.connect() as conn:
            tables = {}
            for table in (IDENTITIES, TRAITS):
                highest = conn.execute(sa.text(f"SELECT max(id) FROM {table}")).scalar_one()
                tables[table] = TableMark(last_id=highest or 0, scan_from=highest or 0)
            return Watermarks(tables=tables, segments=_segment_signatures(conn))

    def passed(self, marks: Watermarks) -> Watermarks:
        """The watermarks moved past every row now in the tables, without looking at them (for
        while capture carries the changes); the next scan still starts at the previous highest
        id, so a row committed late is seen once detection takes over again."""
        with self.engine.connect() as conn:
            tables = {
                table: marks.tables[table].advanced_to(
                    conn.execute(sa.text(f"SELECT max(id) FROM {table}")).scalar_one()
                )
                for table in (IDENTITIES, TRAITS)
            }
            return Watermarks(tables=tables, segments=_segment_signatures(conn))

    def since(self, marks: Watermarks) -> DetectedChanges:
        """Rows above the watermarks' scan start, grouped by environment; segment signatures
        that differ; and the watermarks to keep once the changes are durably queued."""
        with self.engine.connect() as conn:
            identities = self._grouped(conn, IDENTITIES, IDENTITY_CHANGES, marks.tables[IDENTITIES])
            traits = self._grouped(conn, TRAITS, TRAIT_CHANGES, marks.tables[TRAITS])
            signatures = _segment_signatures(conn)
        changed_projects = {
            project: _stamp_of_change(marks.segments.get(project), signatures.get(project))
            for project in set(signatures) | set(marks.segments)
            if signatures.get(project) != marks.segments.get(project)
        }
        watermarks = Watermarks(
            tables={
                IDENTITIES: marks.tables[IDENTITIES].advanced_to(identities.highest),
                TRAITS: marks.tables[TRAITS].advanced_to(traits.highest),
            },
            segments=signatures,
        )
        empty = SegmentSignature(0, None, "")
        return DetectedChanges(
            identities=identities.by_environment,
            traits=traits.by_environment,
            segment_projects=changed_projects,
            watermarks=watermarks,
            segment_keys={
                project: signatures.get(project, empty).changed_segments(
                    marks.segments.get(project)
                )
                for project in changed_projects
            },
            segment_totals={
                project: len(signatures.get(project, empty).segments)
                for project in changed_projects
            },
        )

    def _grouped(self, conn: sa.Connection, table: str, query: str, mark: TableMark) -> _Grouped:
        # The id of the last row this tick may look at: an index-only walk of the new rows.
        upto = conn.execute(
            sa.text(f"SELECT id FROM {table} WHERE id > :last_id ORDER BY id LIMIT 1 OFFSET :skip"),
            {"last_id": mark.last_id, "skip": self.rows_per_tick - 1},
        ).scalar_one_or_none()
        if upto is not None:
            log.info(
                "segment_membership.changes.catching_up",
                table=table,
                from_id=mark.last_id,
                to_id=int(upto),
                rows=self.rows_per_tick,
            )
        stamp = sa.DateTime(timezone=True)
        rows = conn.execute(
            sa.text(query).columns(latest_created=stamp),
            {
                "scan_from": mark.scan_from,
                "last_id": mark.last_id,
                "upto": NO_BOUND if upto is None else int(upto),
            },
        ).all()
        return _Grouped(
            by_environment={
                int(row.environment_id): RowChanges(int(row.unseen), _utc(row.latest_created))
                for row in rows
                if row.environment_id is not None  # a trait whose identity is gone
            },
            highest=max((int(row.highest) for row in rows), default=None),
        )


# Primary-key range scans: ``id > :scan_from AND id <= :upto`` reads only the rows above the
# watermark, as many as a tick may look at.
NO_BOUND = 2**63 - 1
IDENTITY_CHANGES = f"""
    SELECT i.environment_id AS environment_id,
           count(CASE WHEN i.id > :last_id THEN 1 END) AS unseen,
           max(i.created_date) AS latest_created,
           max(i.id) AS highest
    FROM {IDENTITIES} i
    WHERE i.id > :scan_from AND i.id <= :upto
    GROUP BY i.environment_id
"""
# A trait finds its environment through one primary-key lookup of its identity (a scalar
# subquery: the planner cannot turn it into a scan of the identity table, whatever its size).
TRAIT_CHANGES = f"""
    SELECT environment_id,
           count(CASE WHEN id > :last_id THEN 1 END) AS unseen,
           max(created_date) AS latest_created,
           max(id) AS highest
    FROM (
        SELECT t.id, t.created_date,
               (SELECT i.environment_id FROM {IDENTITIES} i WHERE i.id = t.identity_id)
                   AS environment_id
        FROM {TRAITS} t
        WHERE t.id > :scan_from AND t.id <= :upto
    ) new_traits
    GROUP BY environment_id
"""


@dataclass(frozen=True)
class _Grouped:
    by_environment: dict[int, RowChanges]
    highest: int | None


def _segment_signatures(conn: sa.Connection) -> dict[int, SegmentSignature]:
    """Per project: its segments, rules (at any depth) and conditions, soft-deleted ones
    included, folded into a digest of every column that defines them and their stamps, per
    segment (a version row counts for the segment it is a version of) and per project. Any
    creation, edit, soft or hard deletion changes them, whatever the stamps say."""
    segment_digests: dict[tuple[int, int], Any] = {}
    counts: dict[int, int] = {}
    latest: dict[int, datetime | None] = {}

    def fold(
        kind: str, project: int, root: int, fields: list[object], stamps: list[object]
    ) -> None:
        digest = segment_digests.get((project, root))
        if digest is None:
            digest = segment_digests[(project, root)] = hashlib.blake2b(digest_size=16)
        if project not in counts:
            counts[project], latest[project] = 0, None
        utc = [_stamp(value) for value in stamps]
        digest.update(repr((kind, *fields, *(s and s.isoformat() for s in utc))).encode())
        counts[project] += 1
        latest[project] = max([s for s in (latest[project], *utc) if s is not None], default=None)

    for project, root, *fields, created, updated, deleted in conn.execute(sa.text(_SEGMENT_ROWS)):
        fold("segment", project, root, fields, [created, updated, deleted])
    rule_owner: dict[int, tuple[int, int]] = {}
    for project, root, *fields, created, updated, deleted in conn.execute(sa.text(_RULE_ROWS)):
        rule_owner[fields[0]] = (project, root)
        fold("rule", project, root, fields, [created, updated, deleted])
    for rule_id, *fields, created, updated, deleted in conn.execute(sa.text(_CONDITION_ROWS)):
        if rule_id in rule_owner:  # a condition of a rule no segment reaches counts nowhere
            project, root = rule_owner[rule_id]
            fold("condition", project, root, [rule_id, *fields], [created, updated, deleted])
    by_project: dict[int, dict[str, str]] = {}
    for (project, root), digest in sorted(segment_digests.items()):
        by_project.setdefault(project, {})[str(root)] = digest.hexdigest()
    signatures = {}
    for project, segments in by_project.items():
        whole = hashlib.blake2b(digest_size=16)
        whole.update(repr(sorted(segments.items())).encode())
        signatures[int(project)] = SegmentSignature(
            counts[project], latest[project], whole.hexdigest(), segments
        )
    return signatures


_STAMPS = "created_at, updated_at, deleted_at"
# A segment's versions (``version_of_id`` set to another segment) count for that segment.
_SEGMENT_ROWS = f"""
    SELECT project_id, coalesce(version_of_id, id) AS root, id, version_of_id, name, {_STAMPS}
    FROM segments_segment ORDER BY id
"""
_RULE_ROWS = f"""
    WITH RECURSIVE project_rules(id, project_id, root, depth) AS (
        SELECT r.id, s.project_id, coalesce(s.version_of_id, s.id), 0
        FROM segments_segmentrule r JOIN segments_segment s ON s.id = r.segment_id
        UNION ALL
        SELECT c.id, t.project_id, t.root, t.depth + 1
        FROM segments_segmentrule c JOIN project_rules t ON c.rule_id = t.id
        WHERE t.depth < {MAX_RULE_DEPTH}
    )
    SELECT t.project_id, t.root, r.id, r.segment_id, r.rule_id, r.type,
           r.created_at, r.updated_at, r.deleted_at
    FROM segments_segmentrule r JOIN project_rules t ON t.id = r.id ORDER BY r.id
"""
_CONDITION_ROWS = f"""
    SELECT rule_id, id, operator, property, value, {_STAMPS} FROM segments_condition ORDER BY id
"""


def _stamp(value: object) -> datetime | None:
    """A stamp column as a UTC instant (SQLite returns text)."""
    if isinstance(value, str):
        return _utc(datetime.fromisoformat(value))
    return _utc(value) if isinstance(value, datetime) else None


def _stamp_of_change(
    before: SegmentSignature | None, after: SegmentSignature | None
) -> datetime | None:
    """The latest stamp, when the change moved it forward."""
    if after is None or after.latest_change is None:
        return None
    if before is None or before.latest_change is None or after.latest_change > before.latest_change:
        return after.latest_change
    return None


def _utc(stamp: datetime | None) -> datetime | None:
    if stamp is None:
        return None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
