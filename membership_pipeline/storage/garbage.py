"""Garbage collection: retired versions beyond those kept for rollback, and abandoned shadows.

A shadow (``shadow`` or ``sealed``) is abandoned when its claim no longer holds: the process that
wrote it crashed, failed, or was reconciled. A retired version is collected once it is older than
the newest ``keep_retired`` and has been retired for ``retired_grace`` (readers holding it finish
first). Each version goes in its own transaction, whose ``DELETE`` re-checks the condition, so a
concurrent publish, claim or rollback always wins over the collector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from membership_pipeline.storage.database import StoreDatabase
from membership_pipeline.storage.tables import environment, version
from membership_pipeline.structured_logging import get_logger

log = get_logger("store")


@dataclass
class GarbageReport:
    abandoned_versions: list[int] = field(default_factory=list)
    retired_versions: list[int] = field(default_factory=list)
    bytes_freed: int = 0


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
    passes = ((abandoned, report.abandoned_versions), (collectable, report.retired_versions))
    for condition, found in passes:
        with database.reader.connect() as conn:
            candidates = conn.execute(
                sa.select(version.c.version_id, version.c.byte_size).where(condition)
            ).all()
        for candidate in candidates:
            with database.writer.begin() as conn:
                deleted = conn.execute(
                    version.delete().where(version.c.version_id == candidate.version_id, condition)
                ).rowcount
            if deleted:
                found.append(candidate.version_id)
                report.bytes_freed += candidate.byte_size or 0
    if report.abandoned_versions or report.retired_versions:
        log.info(
            "segment_membership.store.garbage_collected",
            abandoned_versions=report.abandoned_versions,
            retired_versions=report.retired_versions,
            bytes_freed=report.bytes_freed,
        )
    return report
