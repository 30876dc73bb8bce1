"""Logical replication of Flagsmith's tables: the publication and slot an operator sets up once
(``membership capture enable``), and what a consumer does each tick — peek a bounded batch of
committed changes, and advance the slot past what it recorded.

The consumer reads through the SQL interface (``pg_logical_slot_peek_binary_changes`` with the
built-in ``pgoutput`` plugin) rather than a streaming replication connection: a peek leaves
the slot where it is until ``pg_replication_slot_advance`` moves it, so the slot advances only
after the store has committed what the batch changed, and a tick is a short, bounded query that
a Dagster sensor can run (no long-lived process to supervise). Both work in a read-only
session; the capturing role needs the ``REPLICATION`` attribute (or superuser) and ``SELECT``.

Setting up needs the tables' owner: a publication on the identity, trait and segment tables,
and replica identities that make a delete say what it deleted —

- ``environments_trait``: ``USING INDEX`` its unique ``(trait_key, identity_id)`` index. A
  deleted trait's old key then carries its identity; an update logs no old values unless it
  changes the key (Flagsmith's never do). Cost to the source: a delete writes those two columns
  to the WAL, nothing more (``FULL`` would log every old row of every update).
- ``environments_identity`` and the segment tables: ``FULL``. A deleted identity then names its
  environment, a deleted rule or condition its parent. Cost: the old row in the WAL of an update
  or delete of these rows, which are rarely written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from membership_pipeline.model.errors import CaptureUnavailable
from membership_pipeline.sources.pgoutput import parse_lsn

DEFAULT_SLOT = "membership_capture"
DEFAULT_PUBLICATION = "membership_capture"
IDENTITY_TABLE = "environments_identity"
TRAIT_TABLE = "environments_trait"
SEGMENT_TABLES = ("segments_segment", "segments_segmentrule", "segments_condition")
CAPTURED_TABLES = (IDENTITY_TABLE, TRAIT_TABLE, *SEGMENT_TABLES)


@dataclass(frozen=True)
class SlotState:
    name: str
    exists: bool
    wal_status: str | None = None  # reserved, extended, unreserved, lost
    confirmed: int | None = None  # confirmed_flush_lsn
    retained_bytes: int | None = None  # WAL the slot holds back (current minus restart LSN)
    lag_bytes: int | None = None  # current minus confirmed

    @property
    def lost(self) -> bool:
        return self.exists and self.wal_status == "lost"


def capture_support(conn: sa.Connection) -> str | None:
    """Why logical replication cannot be used here, in one line (None: it can)."""
    if conn.dialect.name != "postgresql":
        return f"the source is {conn.dialect.name}, not PostgreSQL"
    wal_level = conn.execute(sa.text("SHOW wal_level")).scalar()
    if wal_level != "logical":
        return (
            f"the source's wal_level is {wal_level}, not logical (ALTER SYSTEM SET wal_level = "
            "logical, then restart PostgreSQL)"
        )
    allowed = conn.execute(
        sa.text("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")
    ).scalar()
    if not allowed:
        return "the source's user has neither REPLICATION nor superuser"
    return None


def slot_state(conn: sa.Connection, slot: str) -> SlotState:
    row = conn.execute(
        sa.text(
            "SELECT wal_status, confirmed_flush_lsn::text AS confirmed, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag "
            "FROM pg_replication_slots WHERE slot_name = :slot AND database = current_database()"
        ),
        {"slot": slot},
    ).one_or_none()
    if row is None:
        return SlotState(slot, exists=False)
    return SlotState(
        slot,
        exists=True,
        wal_status=row.wal_status,
        confirmed=parse_lsn(row.confirmed) if row.confirmed else None,
        retained_bytes=row.retained,
        lag_bytes=row.lag,
    )


def publication_exists(conn: sa.Connection, publication: str) -> bool:
    return bool(
        conn.execute(
            sa.text("SELECT 1 FROM pg_publication WHERE pubname = :name"), {"name": publication}
        ).first()
    )


@dataclass(frozen=True)
class MadeSlot:
    """A slot as ``create_slot`` made it: its position (changes after it are captured) and the
    source's next transaction id read just after (see ``model.slot_coverage``); ``horizon`` is
    None for a slot found already made."""

    position: int
    horizon: int | None


def create_slot(conn: sa.Connection, slot: str) -> MadeSlot:
    """A new ``pgoutput`` slot. ``conn`` is at READ COMMITTED, so the horizon's statement
    takes a snapshot of its own, after the slot's consistent point."""
    lsn = conn.execute(
        sa.text("SELECT lsn::text FROM pg_create_logical_replication_slot(:slot, 'pgoutput')"),
        {"slot": slot},
    ).scalar_one()
    horizon = conn.execute(
        sa.text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
    ).scalar_one()
    return MadeSlot(parse_lsn(lsn), int(horizon))


def drop_slot(conn: sa.Connection, slot: str) -> bool:
    return bool(
        conn.execute(
            sa.text(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = :slot AND database = current_database()"
            ),
            {"slot": slot},
        ).rowcount
    )


def peek(
    conn: sa.Connection, slot: str, publication: str, max_changes: int
) -> Iterator[tuple[int, bytes]]:
    """Up to about ``max_changes`` messages after the slot's confirmed position, as (position,
    message); whole transactions only (PostgreSQL checks the bound at commits)."""
    rows = conn.execute(
        sa.text(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(:slot, NULL, "
            ":n, 'proto_version', '1', 'publication_names', :publication)"
        ),
        {"slot": slot, "n": max_changes, "publication": publication},
    )
    for lsn, data in rows:
        yield parse_lsn(lsn), bytes(data)


def advance(conn: sa.Connection, slot: str, position: int) -> None:
    """Confirm everything up to ``position`` (the slot frees the WAL before it)."""
    conn.execute(
        sa.text("SELECT pg_replication_slot_advance(:slot, CAST(:lsn AS pg_lsn))"),
        {"slot": slot, "lsn": f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"},
    )


def enable_capture(engine: sa.Engine, publication: str, slot: str) -> MadeSlot:
    """The publication, the replica identities and the slot (see the module's docstring);
    returns the slot (one already there: its position, no horizon). Needs the tables' owner
    and REPLICATION."""
    with engine.begin() as conn:
        reason = capture_support(conn)
        if reason is not None:
            raise CaptureUnavailable(f"change capture cannot be enabled: {reason}")
        trait_index = conn.execute(
            sa.text(
                """
                SELECT c.relname FROM pg_index i
                JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = CAST(:table AS regclass) AND i.indisunique
                  AND i.indpred IS NULL
                  AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                       WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey))
                      = ARRAY['identity_id', 'trait_key']
                """
            ),
            {"table": TRAIT_TABLE},
        ).scalar()
        identity = f"USING INDEX {trait_index}" if trait_index else "FULL"
        conn.execute(sa.text(f"ALTER TABLE {TRAIT_TABLE} REPLICA IDENTITY {identity}"))
        for table in (IDENTITY_TABLE, *SEGMENT_TABLES):
            conn.execute(sa.text(f"ALTER TABLE {table} REPLICA IDENTITY FULL"))
        if not publication_exists(conn, publication):
            tables = ", ".join(CAPTURED_TABLES)
            conn.execute(sa.text(f"CREATE PUBLICATION {publication} FOR TABLE {tables}"))
    # A slot is made outside any transaction that wrote (PostgreSQL refuses it otherwise).
    with engine.begin() as conn:
        existing = slot_state(conn, slot)
        if existing.exists and not existing.lost:
            assert existing.confirmed is not None
            return MadeSlot(existing.confirmed, None)
        if existing.lost:
            drop_slot(conn, slot)
    with engine.begin() as conn:
        return create_slot(conn, slot)


def disable_capture(engine: sa.Engine, publication: str, slot: str) -> None:
    """Drop the slot (the WAL it held is freed) and the publication."""
    with engine.begin() as conn:
        drop_slot(conn, slot)
        conn.execute(sa.text(f"DROP PUBLICATION IF EXISTS {publication}"))
