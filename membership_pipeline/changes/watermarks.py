"""Change detection's watermarks in the store: read at the start of a tick, written in the
transaction that queues what the tick detected (so a crash in between re-detects, never
skips)."""

from __future__ import annotations

import json
from datetime import datetime

import sqlalchemy as sa

from membership_pipeline.changes.tables import segment_signature, source_watermark
from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.model.changes import SegmentSignature, TableMark, Watermarks


def load_watermarks(database: StoreDatabase) -> Watermarks | None:
    """The last tick's watermarks; None before the first tick."""
    with database.reader.connect() as conn:
        tables = conn.execute(sa.select(source_watermark)).all()
        if not tables:
            return None
        signatures = conn.execute(sa.select(segment_signature)).all()
    return Watermarks(
        tables={row.table_name: TableMark(row.last_id, row.scan_from) for row in tables},
        segments={
            row.project_id: SegmentSignature(
                row.row_count,
                row.latest_change,
                row.digest,
                json.loads(row.segment_digests or "{}"),
            )
            for row in signatures
        },
    )


def save_watermarks(
    conn: sa.Connection, new: Watermarks, old: Watermarks | None, now: datetime
) -> None:
    """Write what differs from ``old`` (the tick's starting point), in the caller's
    transaction."""
    for name, mark in new.tables.items():
        if old is not None and old.tables.get(name) == mark:
            continue
        conn.execute(sa.delete(source_watermark).where(source_watermark.c.table_name == name))
        conn.execute(
            sa.insert(source_watermark).values(
                table_name=name, last_id=mark.last_id, scan_from=mark.scan_from, updated_at=now
            )
        )
    before = {} if old is None else old.segments
    changed = {p for p in set(new.segments) | set(before) if new.segments.get(p) != before.get(p)}
    if changed:
        conn.execute(
            sa.delete(segment_signature).where(segment_signature.c.project_id.in_(changed))
        )
        rows = [
            {
                "project_id": p,
                "row_count": s.rows,
                "latest_change": s.latest_change,
                "digest": s.digest,
                "segment_digests": json.dumps(s.segments, sort_keys=True),
            }
            for p, s in new.segments.items()
            if p in changed
        ]
        if rows:
            conn.execute(sa.insert(segment_signature), rows)
