"""Sealing a sharded version: check that every planned shard is staged, merge the shards' parts
into the version's directory (``membership_bitmap``) and mark it sealed; ``publish`` (one flip)
follows.

An **incremental** plan evaluates only the new and edited segments; its shards write no
universe. Sealing adds directory rows for the base version's universe and unchanged segments
that point at the chunks the base (or the version the base shares them with) wrote: no byte is
copied, and the base row is locked while the rows that point at it are written, so the garbage
collector (which re-reads the references after taking that lock) never deletes a chunk a version
uses.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.database.metadata import VersionId
from membership_pipeline.model.errors import InvalidVersion
from membership_pipeline.model.refresh_mode import definition_digest
from membership_pipeline.storage.base_versions import lock_base
from membership_pipeline.storage.identity_answers import column_keys, record_answer_keys
from membership_pipeline.storage.plans import StagedPlan
from membership_pipeline.storage.tables import bitmap, bitmap_chunk, shard, shard_bitmap, version
from membership_pipeline.storage.versions import log_sealed, mark_sealed, require_shadow


@dataclass(frozen=True)
class SealedTotals:
    identity_count: int
    segments: int
    failed_segments: int
    atoms: int
    chunks: int
    bytes: int  # of the chunks this version wrote
    shared_bytes: int = 0  # of the chunks it shares with earlier versions
    reevaluated_segments: int = 0
    reused_segments: int = 0

    def counts(self) -> dict[str, int]:
        """In the shape ``mark_sealed`` and ``log_sealed`` take."""
        return {
            "segment": self.segments,
            "failed": self.failed_segments,
            "atom": self.atoms,
            "chunks": self.chunks,
            "bytes": self.bytes,
        }


def seal_shards(database: StoreDatabase, plan: StagedPlan, *, now: datetime) -> SealedTotals:
    """Merge every shard's part into the version's directory and seal it (one transaction).

    A segment that failed in any shard is failed in the version (its definition is the same in
    every shard; the chunks other shards wrote for it are dropped)."""
    with database.writer.begin() as conn:
        require_shadow(conn, plan.version_id, plan.claim)
        states = dict(
            conn.execute(
                sa.select(shard.c.shard_index, shard.c.state).where(
                    shard.c.version_id == plan.version_id
                )
            ).all()
        )
        missing = [s.index for s in plan.shards if states.get(s.index) != "staged"]
        if missing:
            raise InvalidVersion(
                f"version {plan.version_id} cannot be sealed: shards {missing[:10]} are not staged"
            )
        parts = conn.execute(
            sa.select(shard_bitmap)
            .where(shard_bitmap.c.version_id == plan.version_id)
            .order_by(shard_bitmap.c.kind, shard_bitmap.c.key, shard_bitmap.c.shard_index)
        ).all()
        merged, failed_keys = _merge_parts(
            parts, len(plan.shards), plan.version_id, with_universe=not plan.incremental
        )
        digests = {str(s["key"]): definition_digest(s) for s in plan.segments}
        for row in merged:
            row["evaluated_as_of"] = plan.as_of
            row["definition_digest"] = digests.get(row["key"]) if row["kind"] == "segment" else None
        if failed_keys:
            conn.execute(
                bitmap_chunk.delete().where(
                    bitmap_chunk.c.version_id == plan.version_id,
                    bitmap_chunk.c.kind == "segment",
                    bitmap_chunk.c.key.in_(failed_keys),
                )
            )
        if merged:
            conn.execute(bitmap.insert(), merged)
        if plan.incremental:
            _share_base_bitmaps(conn, plan)
        else:  # every shard wrote its identities' answers, columns in this order (its keys
            # are the segments the merge found in every shard)
            keys = column_keys([row["key"] for row in merged if row["kind"] == "segment"])
            record_answer_keys(conn, plan.version_id, keys)
        totals = _directory_totals(conn, plan.version_id)
        mark_sealed(
            conn,
            plan.version_id,
            now=now,
            identity_count=totals.identity_count,
            totals=totals.counts(),
        )
        conn.execute(
            version.update()
            .where(version.c.version_id == plan.version_id)
            .values(
                reevaluated_segment_count=totals.reevaluated_segments,
                reused_segment_count=totals.reused_segments,
            )
        )
    log_sealed(plan.environment_key, plan.version_id, totals.identity_count, totals.counts())
    return totals


def _share_base_bitmaps(conn: sa.Connection, plan: StagedPlan) -> None:
    """Directory rows for the base's universe and unchanged segments, pointing at the chunks
    that hold them (never copied). The base row is locked first (shared): the collector takes
    it exclusively before it looks for references, so it waits for this transaction and then
    sees these rows."""
    base_id = plan.base_version_id
    base = lock_base(conn, plan.environment_key, plan.version_id, base_id)
    columns = ["kind", "key", "name", "cardinality", "byte_size", "chunk_count", "error_code",
               "error_message", "definition_digest"]  # fmt: skip
    shared = 0
    wanted = [None, *plan.reused_segments]  # None: the universe
    for start in range(0, len(wanted), 500):
        batch = wanted[start : start + 500]
        keys = [k for k in batch if k is not None]
        which = bitmap.c.kind == "segment"
        which = which & bitmap.c.key.in_(keys) if keys else sa.false()
        if None in batch:
            which = which | (bitmap.c.kind == "universe")
        source_rows = sa.select(
            sa.literal(plan.version_id, VersionId),
            *(bitmap.c[name] for name in columns),
            sa.func.coalesce(bitmap.c.chunk_version_id, bitmap.c.version_id),
            sa.func.coalesce(
                bitmap.c.evaluated_as_of, sa.literal(base.as_of, version.c.as_of.type)
            ),
        ).where(bitmap.c.version_id == base_id, which)
        shared += conn.execute(
            bitmap.insert().from_select(
                ["version_id", *columns, "chunk_version_id", "evaluated_as_of"], source_rows
            )
        ).rowcount
    if shared != len(wanted):
        raise InvalidVersion(
            f"version {base_id} holds {shared - 1} of the {len(wanted) - 1} segments version "
            f"{plan.version_id} shares with it (or no universe)"
        )


def _merge_parts(
    parts: Sequence[sa.Row[Any]], shard_count: int, version_id: int, *, with_universe: bool = True
) -> tuple[list[dict[str, Any]], list[str]]:
    merged: list[dict[str, Any]] = []
    failed_keys: list[str] = []
    for (kind, key), group in itertools.groupby(parts, key=lambda r: (r.kind, r.key)):
        rows = list(group)
        if len(rows) != shard_count:
            raise InvalidVersion(
                f"version {version_id}: {kind} {key!r} is in {len(rows)} of {shard_count} shards "
                "(the shards evaluated different definitions)"
            )
        failure = next((r for r in rows if r.error_code is not None), None)
        if failure is not None:
            failed_keys.append(key)
        merged.append(
            {
                "version_id": version_id,
                "kind": kind,
                "key": key,
                "name": rows[0].name,
                "cardinality": 0 if failure else sum(r.cardinality for r in rows),
                "byte_size": 0 if failure else sum(r.byte_size for r in rows),
                "chunk_count": 0 if failure else sum(r.chunk_count for r in rows),
                "error_code": failure.error_code if failure else None,
                "error_message": failure.error_message if failure else None,
            }
        )
    if with_universe and not any(row["kind"] == "universe" for row in merged):
        raise InvalidVersion(f"version {version_id} has no universe in its shards")
    if not with_universe and any(row["kind"] == "universe" for row in merged):
        raise InvalidVersion(f"version {version_id} is incremental: its shards write no universe")
    return merged, failed_keys


def _directory_totals(conn: sa.Connection, version_id: int) -> SealedTotals:
    shared = bitmap.c.chunk_version_id.is_not(None)
    rows = conn.execute(
        sa.select(
            bitmap.c.kind,
            bitmap.c.error_code.is_not(None).label("failed"),
            shared.label("shared"),
            sa.func.count().label("bitmaps"),
            sa.func.sum(bitmap.c.cardinality).label("cardinality"),
            sa.func.sum(bitmap.c.chunk_count).label("chunks"),
            sa.func.sum(bitmap.c.byte_size).label("bytes"),
        )
        .where(bitmap.c.version_id == version_id)
        .group_by(bitmap.c.kind, bitmap.c.error_code.is_not(None), shared)
    ).all()

    def total(field: str, **where: Any) -> int:
        return sum(
            int(getattr(r, field) or 0)
            for r in rows
            if all(
                bool(getattr(r, k)) == v if k != "kind" else r.kind == v for k, v in where.items()
            )
        )

    return SealedTotals(
        identity_count=total("cardinality", kind="universe"),
        segments=total("bitmaps", kind="segment", failed=False),
        failed_segments=total("bitmaps", kind="segment", failed=True),
        atoms=total("bitmaps", kind="atom"),
        chunks=total("chunks", shared=False),
        bytes=total("bytes", shared=False),
        shared_bytes=total("bytes", shared=True),
        reevaluated_segments=total("bitmaps", kind="segment", shared=False),
        reused_segments=total("bitmaps", kind="segment", shared=True),
    )
