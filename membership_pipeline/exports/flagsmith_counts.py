"""Exact segment counts into Flagsmith's own table, which its REST API returns as
``membership_counts`` (``GET /api/v1/projects/{project}/segments/{segment}/``) and its dashboard
shows; Flagsmith fills it from ClickHouse every 6 hours by default.

The table is Flagsmith's ``segment_membership_segmentmembershipcount`` (migration
``segment_membership/0001_initial``: ``id``, ``count`` (≥ 0), ``last_synced_at``,
``environment_id`` → ``environments_environment``, ``segment_id`` → ``segments_segment``, unique
on (segment, environment)). One environment's rows are written in one transaction: every
evaluated segment of the published version upserted, the rows of segments the version no
longer has (deleted in Flagsmith) removed. A segment that failed to evaluate keeps its row (its
``last_synced_at`` says how old it is). The connection needs write access to that one table only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from membership_pipeline.structured_logging import get_logger

TABLE = "segment_membership_segmentmembershipcount"
log = get_logger("flagsmith_counts")

_counts = sa.table(
    TABLE,
    sa.column("id", sa.Integer),
    sa.column("count", sa.Integer),
    sa.column("last_synced_at", sa.DateTime(timezone=True)),
    sa.column("environment_id", sa.Integer),
    sa.column("segment_id", sa.Integer),
)


@dataclass(frozen=True)
class CountsWritten:
    upserted: int
    removed: int
    skipped: list[int]  # segments deleted in Flagsmith since the version was published


def write_counts(
    engine: sa.Engine,
    environment_id: int,
    counts: Mapping[str, int],
    kept: set[str],
    synced_at: datetime,
) -> CountsWritten:
    """Upsert ``counts`` (segment key → members) as the environment's rows, and remove its rows
    of segments not in ``kept`` (the version's segments, failed ones included)."""
    rows = [
        {"segment_id": int(key), "environment_id": environment_id, "count": count,
         "last_synced_at": synced_at}
        for key, count in sorted(counts.items())
        if key.isdigit()
    ]  # fmt: skip
    skipped: list[int] = []
    with engine.begin() as conn:
        try:
            with conn.begin_nested():
                _upsert(conn, rows)
        except sa.exc.IntegrityError:
            # A segment deleted in Flagsmith after the version was read: its foreign key fails.
            # Row by row, each in its own savepoint, to write the others.
            skipped = _upsert_each(conn, rows)
        removed = conn.execute(
            sa.delete(_counts).where(
                _counts.c.environment_id == environment_id,
                _counts.c.segment_id.not_in(sorted(int(k) for k in kept if k.isdigit())),
            )
        ).rowcount
    written = CountsWritten(len(rows) - len(skipped), removed, skipped)
    log.info(
        "segment_membership.flagsmith_counts.written",
        environment_id=environment_id,
        upserted=written.upserted,
        removed=written.removed,
        skipped=len(skipped),
    )
    return written


def _upsert(conn: sa.Connection, rows: list[dict]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        # Checked now, not at commit (Django makes its foreign keys deferrable): a missing
        # segment fails this statement, inside the savepoint.
        conn.execute(sa.text("SET CONSTRAINTS ALL IMMEDIATE"))
    statement = _insert(conn)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["segment_id", "environment_id"],
            set_={
                "count": statement.excluded["count"],
                "last_synced_at": statement.excluded.last_synced_at,
            },
        ),
        rows,
    )


def _upsert_each(conn: sa.Connection, rows: list[dict]) -> list[int]:
    skipped = []
    for row in rows:
        try:
            with conn.begin_nested():
                _upsert(conn, [row])
        except sa.exc.IntegrityError:
            skipped.append(row["segment_id"])
            log.info(
                "segment_membership.flagsmith_counts.segment_gone",
                segment_id=row["segment_id"],
                environment_id=row["environment_id"],
            )
    return skipped


def _insert(conn: sa.Connection) -> Any:  # the dialect's Insert, with on_conflict_do_update
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(_counts)
