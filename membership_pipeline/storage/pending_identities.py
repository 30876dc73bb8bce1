"""Identities whose traits changed since the published version (captured from the source's
replication stream): recorded with the stream position that saw them last; a plan notes the
highest position it covers (read before it opens its source snapshot, so every change at or
below it is in that snapshot), and its publish clears exactly those rows in the flip's
transaction. A change seen again after planning keeps its row (its position is higher)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.storage.tables import pending_identity, version_plan

BATCH_ROWS = 5_000


@dataclass(frozen=True)
class PendingIdentities:
    ids: BitMap
    position: int | None  # the highest capture position among them (None: none pending)


def pending_identities(database: StoreDatabase, environment_key: str) -> PendingIdentities:
    with database.reader.connect() as conn:
        rows = conn.execute(
            sa.select(pending_identity.c.identity_id, pending_identity.c.position).where(
                pending_identity.c.environment_key == environment_key
            )
        ).all()
    return PendingIdentities(
        BitMap(r.identity_id for r in rows), max((r.position for r in rows), default=None)
    )


def pending_counts(database: StoreDatabase) -> dict[str, int]:
    with database.reader.connect() as conn:
        rows = conn.execute(
            sa.select(pending_identity.c.environment_key, sa.func.count()).group_by(
                pending_identity.c.environment_key
            )
        ).all()
    return {key: int(count) for key, count in rows}


def record_pending(
    conn: sa.Connection, changed: Iterable[tuple[str, int, int]], now: datetime
) -> int:
    """``(environment key, identity id, position)`` rows, in the caller's transaction; an
    identity already pending takes the higher position."""
    rows = [
        {"environment_key": key, "identity_id": identity, "position": position, "captured_at": now}
        for key, identity, position in changed
    ]
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    for start in range(0, len(rows), BATCH_ROWS):
        statement = insert(pending_identity)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["environment_key", "identity_id"],
                set_={
                    "position": sa.func.greatest(
                        pending_identity.c.position, statement.excluded.position
                    )
                    if conn.dialect.name == "postgresql"
                    else sa.func.max(pending_identity.c.position, statement.excluded.position),
                    "captured_at": statement.excluded.captured_at,
                },
            ),
            rows[start : start + BATCH_ROWS],
        )
    return len(rows)


def clear_covered(conn: sa.Connection, environment_key: str, version_id: int) -> int:
    """In the flip's transaction: the pending rows the published version's plan covered."""
    position = conn.execute(
        sa.select(version_plan.c.pending_position).where(version_plan.c.version_id == version_id)
    ).scalar()
    if position is None:
        return 0
    return conn.execute(
        pending_identity.delete().where(
            pending_identity.c.environment_key == environment_key,
            pending_identity.c.position <= position,
        )
    ).rowcount
