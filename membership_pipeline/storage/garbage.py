"""Garbage collection: retired versions beyond those kept for rollback, and abandoned shadows.

A shadow (``shadow`` or ``sealed``) is abandoned when its claim no longer holds: the process that
wrote it crashed, failed, or was reconciled. A retired version is collected once it is older than
the newest ``keep_retired`` and has been retired for ``retired_grace`` (readers holding it finish
first). Each version goes in its own transaction, whose ``DELETE`` re-checks the condition, so a
concurrent publish, claim or rollback always wins over the collector.

Chunks are collected **by reference**: an incremental version's directory points at chunks an
earlier version wrote, and a delta version's link rows at single chunks of one. A collected
version whose chunks a kept version still uses loses its directory and every chunk no one uses,
and stays as ``collected`` (holding only the used chunks) until the last version using them is
collected too. The collector locks a version's row before it looks for references; sealing an
incremental version (or writing a delta) locks its base's row (shared) while it writes rows
pointing at it, so the collector either waits for those rows or the writer finds the base gone
and fails cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.storage.identity_answers import collect_answers
from membership_pipeline.storage.tables import (
    bitmap,
    bitmap_chunk,
    environment,
    stored_bytes,
    version,
)
from membership_pipeline.structured_logging import get_logger

log = get_logger("store")
COLLECTED = "collected"  # directory gone; kept only for chunks other versions use


@dataclass
class GarbageReport:
    abandoned_versions: list[int] = field(default_factory=list)
    retired_versions: list[int] = field(default_factory=list)
    # Collected, but part of their chunks is still used by kept versions.
    still_referenced_versions: list[int] = field(default_factory=list)
    bytes_freed: int = 0
    answer_rows_deleted: int = 0  # answers by identity neither live nor being written


def collect_garbage(
    database: StoreDatabase,
    *,
    now: datetime,
    keep_retired: int = 2,
    retired_grace: timedelta = timedelta(minutes=5),
) -> GarbageReport:
    if keep_retired < 0:
        raise ValueError(f"keep_retired must be 0 or more, got {keep_retired}")
    report = GarbageReport()
    current_token = (
        sa.select(environment.c.claim_token)
        .where(environment.c.environment_key == version.c.environment_key)
        .scalar_subquery()
    )
    abandoned = sa.and_(
        version.c.state.in_(("shadow", "sealed")),
        version.c.claim_token.is_distinct_from(current_token),
    )
    newer = version.alias("newer")
    newer_retired = (
        sa.select(sa.func.count())
        .where(
            newer.c.environment_key == version.c.environment_key,
            newer.c.state == "retired",
            newer.c.version_id > version.c.version_id,
        )
        .scalar_subquery()
    )
    collectable = sa.and_(
        version.c.state == "retired",
        version.c.retired_at <= now - retired_grace,
        newer_retired >= keep_retired,
    )
    # An abandoned shadow is never shared: no version builds on an unpublished one.
    for version_id in _candidates(database, abandoned):
        with database.writer.begin() as conn:
            freed = _own_bytes(conn, version_id)
            if conn.execute(
                version.delete().where(version.c.version_id == version_id, abandoned)
            ).rowcount:
                report.abandoned_versions.append(version_id)
                report.bytes_freed += freed
    for version_id in _candidates(database, collectable):
        with database.writer.begin() as conn:
            if _lock(conn, version_id, collectable):
                report.retired_versions.append(version_id)
                report.bytes_freed += _collect(conn, version_id)
    # Versions kept only for chunks others used: free what is no longer used.
    for version_id in _candidates(database, version.c.state == COLLECTED):
        with database.writer.begin() as conn:
            if _lock(conn, version_id, version.c.state == COLLECTED):
                report.bytes_freed += _collect(conn, version_id)
    with database.writer.begin() as conn:
        report.answer_rows_deleted = collect_answers(conn)
    with database.reader.connect() as conn:
        report.still_referenced_versions = list(
            conn.execute(
                sa.select(version.c.version_id)
                .where(version.c.state == COLLECTED)
                .order_by(version.c.version_id)
            ).scalars()
        )
    if (
        report.abandoned_versions
        or report.retired_versions
        or report.bytes_freed
        or report.answer_rows_deleted
    ):
        log.info(
            "segment_membership.store.garbage_collected",
            abandoned_versions=report.abandoned_versions,
            retired_versions=report.retired_versions,
            still_referenced_versions=report.still_referenced_versions,
            bytes_freed=report.bytes_freed,
            answer_rows_deleted=report.answer_rows_deleted,
        )
    return report


def _candidates(database: StoreDatabase, condition: sa.ColumnElement[bool]) -> list[int]:
    with database.reader.connect() as conn:
        return list(conn.execute(sa.select(version.c.version_id).where(condition)).scalars())


def _lock(conn: sa.Connection, version_id: int, condition: sa.ColumnElement[bool]) -> bool:
    """Lock the version's row if it still qualifies. Statements after this one see every
    reference committed before the lock was granted (a new snapshot per statement)."""
    return (
        conn.execute(
            sa.select(version.c.version_id)
            .where(version.c.version_id == version_id, condition)
            .with_for_update()
        ).first()
        is not None
    )


def _collect(conn: sa.Connection, version_id: int) -> int:
    """Drop the (locked) version's directory and every chunk of it no other version uses; the
    row goes too once none is left, else it stays ``collected``. Returns the bytes freed."""
    shared = sa.exists().where(
        bitmap.c.chunk_version_id == version_id,
        bitmap.c.version_id != version_id,
        bitmap.c.kind == bitmap_chunk.c.kind,
        bitmap.c.key == bitmap_chunk.c.key,
    )
    # A delta version's link to this chunk (links never chain: they name the payload's row).
    link = bitmap_chunk.alias("link")
    linked = sa.exists().where(
        link.c.source_version_id == version_id,
        link.c.version_id != version_id,
        link.c.kind == bitmap_chunk.c.kind,
        link.c.key == bitmap_chunk.c.key,
        link.c.source_chunk_index == bitmap_chunk.c.chunk_index,
    )
    used = sa.or_(shared, linked)
    unused = sa.and_(bitmap_chunk.c.version_id == version_id, ~used)
    freed = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(stored_bytes()), 0)).where(unused)
    ).scalar_one()
    still_used = sa.exists().where(bitmap_chunk.c.version_id == version_id, used)
    if conn.execute(sa.select(still_used)).scalar():
        conn.execute(bitmap_chunk.delete().where(unused))
        conn.execute(bitmap.delete().where(bitmap.c.version_id == version_id))
        conn.execute(
            version.update().where(version.c.version_id == version_id).values(state=COLLECTED)
        )
    else:
        conn.execute(version.delete().where(version.c.version_id == version_id))
    return int(freed)


def _own_bytes(conn: sa.Connection, version_id: int) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(stored_bytes()), 0)).where(
                bitmap_chunk.c.version_id == version_id
            )
        ).scalar_one()
    )
