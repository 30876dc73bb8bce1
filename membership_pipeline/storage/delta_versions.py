"""Writing an identity-delta version: the published (base) version with the changed identities'
answers replaced, where only the chunks holding a changed bit are new.

For every bitmap of the base (its universe and each segment), the changed ids are assigned to the
chunk whose id range would hold them; a chunk whose bits for those ids are unchanged is **linked**
(a chunk row without payload naming the version and chunk that hold its bytes), one whose bits
changed is rewritten (and split again if it outgrew the chunk size). A bitmap with no changed
chunk is shared whole, as an incremental version shares it. Links always name a chunk with a
payload, so a version many deltas deep still reads each chunk with one lookup.

One transaction writes the whole version (a retried step replaces what an earlier attempt
wrote), with the base's row locked (shared) while the links to its chunks are written: the
collector locks a version's row before it looks for references (``garbage``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pyroaring import BitMap, FrozenBitMap

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.model.errors import InvalidVersion
from membership_pipeline.model.refresh_mode import definition_digest
from membership_pipeline.storage.base_versions import lock_base
from membership_pipeline.storage.binary_copy import copy_rows
from membership_pipeline.storage.chunking import DEFAULT_CHUNK_BYTES, load_chunk, split_bitmap
from membership_pipeline.storage.plans import StagedPlan
from membership_pipeline.storage.reader import ChunkCache, ChunkKey
from membership_pipeline.storage.sealing import SealedTotals
from membership_pipeline.storage.tables import (
    bitmap,
    bitmap_chunk,
    chunk_owner,
    chunks_of_bitmap,
    payload_index,
    payload_version,
    shard,
    version,
)
from membership_pipeline.storage.versions import (
    UNIVERSE_KEY,
    log_sealed,
    mark_sealed,
    require_shadow,
)
from membership_pipeline.structured_logging import get_logger

log = get_logger("store")


@dataclass(frozen=True)
class DeltaAnswers:
    """What evaluating the changed identities gave: ``changed`` every id re-evaluated (present in
    the source or not), ``universe`` those present, each segment's members among them, and the
    segments that failed (code, message)."""

    changed: BitMap
    universe: BitMap
    segments: Mapping[str, BitMap]
    names: Mapping[str, str | None]
    failures: Mapping[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class DeltaTotals:
    identities: int = 0  # re-evaluated
    bitmaps_rewritten: int = 0
    bitmaps_shared: int = 0
    chunks_written: int = 0
    chunks_linked: int = 0
    bytes_written: int = 0
    bytes_shared: int = 0  # of the chunks linked or shared, written by earlier versions

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _BaseChunk:
    min_id: int
    max_id: int
    cardinality: int
    owner: int  # the version whose row holds the payload
    owner_index: int
    size: int


def write_delta(
    database: StoreDatabase,
    plan: StagedPlan,
    answers: DeltaAnswers,
    *,
    report: Mapping[str, Any],
    now: datetime,
    chunks_cache: ChunkCache,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> DeltaTotals:
    """The whole delta version, in one transaction; its one shard marked staged with
    ``report``. ``chunks_cache`` holds deserialized chunks across deltas (a long-running
    process reads each base chunk once, and keeps the ones it writes)."""
    started = time.perf_counter()
    base_id = plan.base_version_id
    totals = DeltaTotals(identities=len(answers.changed))
    with database.writer.begin() as conn:
        require_shadow(conn, plan.version_id, plan.claim)
        lock_base(conn, plan.environment_key, plan.version_id, base_id)
        conn.execute(bitmap.delete().where(bitmap.c.version_id == plan.version_id))
        conn.execute(bitmap_chunk.delete().where(bitmap_chunk.c.version_id == plan.version_id))
        directory = _base_directory(conn, base_id)
        chunks = _base_chunks(conn, base_id)
        digests = {str(s["key"]): definition_digest(s) for s in plan.segments}
        wanted = [("universe", UNIVERSE_KEY), *(("segment", key) for key in digests)]
        payloads = _touched_payloads(chunks_cache, chunks, answers.changed)
        rows, chunk_rows = [], []
        for kind, key in wanted:
            base_row = directory.get((kind, key))
            if base_row is None:
                raise InvalidVersion(
                    f"version {base_id} has no {kind} {key!r}: a delta builds only on a version "
                    "with today's segments (run a full backfill)"
                )
            failure = answers.failures.get(key) if kind == "segment" else None
            if failure is not None or base_row.error_code is not None:
                if failure is None or base_row.error_code is None:
                    raise InvalidVersion(
                        f"segment {key!r} failed in only one of version {base_id} and its delta "
                        f"({failure or base_row.error_code}): run a full backfill"
                    )
                rows.append(_shared_row(plan, base_row) | {"chunk_version_id": None})
                continue
            answer = answers.universe if kind == "universe" else answers.segments[key]
            rebuilt = _rebuild(
                chunks.get((kind, key), []), payloads, kind, key, answers.changed, answer,
                chunk_bytes,
            )  # fmt: skip
            if rebuilt is None:
                rows.append(_shared_row(plan, base_row))
                totals.bitmaps_shared += 1
                totals.bytes_shared += int(base_row.byte_size)
                continue
            totals.bitmaps_rewritten += 1
            cardinality = size = 0
            for index, piece in enumerate(rebuilt):
                row = {"version_id": plan.version_id, "kind": kind, "key": key,
                       "chunk_index": index}  # fmt: skip
                if isinstance(piece, _BaseChunk):
                    totals.chunks_linked += 1
                    totals.bytes_shared += piece.size
                    row |= {
                        "min_id": piece.min_id,
                        "max_id": piece.max_id,
                        "cardinality": piece.cardinality,
                        "payload": None,
                        "source_version_id": piece.owner,
                        "source_chunk_index": piece.owner_index,
                    }
                    cardinality, size = cardinality + piece.cardinality, size + piece.size
                else:
                    totals.chunks_written += 1
                    totals.bytes_written += len(piece.payload)
                    row |= {
                        "min_id": piece.min_id,
                        "max_id": piece.max_id,
                        "cardinality": piece.cardinality,
                        "payload": piece.payload,
                        "source_version_id": None,
                        "source_chunk_index": None,
                    }
                    cardinality, size = cardinality + piece.cardinality, size + len(piece.payload)
                chunk_rows.append(row)
            rows.append(
                {
                    "version_id": plan.version_id,
                    "kind": kind,
                    "key": key,
                    "name": answers.names.get(key, base_row.name) if kind == "segment" else None,
                    "cardinality": cardinality,
                    "byte_size": size,
                    "chunk_count": len(rebuilt),
                    "error_code": None,
                    "error_message": None,
                    "chunk_version_id": None,
                    "evaluated_as_of": plan.as_of,
                    "definition_digest": digests.get(key) if kind == "segment" else None,
                }
            )
        if chunk_rows and conn.dialect.name == "postgresql":  # payloads as raw bytes
            copy_rows(conn, bitmap_chunk, chunk_rows)
        elif chunk_rows:
            conn.execute(bitmap_chunk.insert(), chunk_rows)
        conn.execute(bitmap.insert(), rows)
        universe = next(r for r in rows if r["kind"] == "universe")
        conn.execute(
            version.update()
            .where(version.c.version_id == plan.version_id)
            .values(
                delta_identity_count=totals.identities,
                shared_byte_size=totals.bytes_shared,
                source_identity_count=universe["cardinality"],
                source_max_identity_id=_universe_max(conn, plan.version_id),
            )
        )
        conn.execute(
            shard.update()
            .where(shard.c.version_id == plan.version_id)
            .values(
                state="staged",
                staged_at=now,
                attempts=shard.c.attempts + 1,
                identity_count=len(answers.universe),
                report=json.dumps(
                    dict(report)
                    | {
                        "delta": totals.as_dict(),
                        "seconds": dict(report.get("seconds", {}))
                        | {"write": round(time.perf_counter() - started, 3)},
                    }
                ),
            )
        )
    for row in chunk_rows:  # committed: what later deltas (and readers) will read
        if row["payload"] is not None:
            chunks_cache.put(
                (plan.version_id, row["kind"], row["key"], row["chunk_index"]),
                load_chunk(row["payload"]),
                len(row["payload"]),
            )
    log.info(
        "segment_membership.store.delta_staged",
        environment=plan.environment_key,
        version=plan.version_id,
        base_version=base_id,
        **totals.as_dict(),
    )
    return totals


def seal_delta(database: StoreDatabase, plan: StagedPlan, *, now: datetime) -> SealedTotals:
    """Check the delta was staged and seal it (its directory is already complete)."""
    with database.writer.begin() as conn:
        require_shadow(conn, plan.version_id, plan.claim)
        staged = conn.execute(
            sa.select(shard.c.state).where(shard.c.version_id == plan.version_id)
        ).scalars()
        if list(staged) != ["staged"]:
            raise InvalidVersion(f"delta version {plan.version_id} cannot be sealed: not staged")
        row = conn.execute(
            sa.select(version.c.shared_byte_size).where(version.c.version_id == plan.version_id)
        ).one()
        counts = conn.execute(
            sa.select(
                sa.func.count().filter(bitmap.c.kind == "segment", bitmap.c.error_code.is_(None)),
                sa.func.count().filter(bitmap.c.error_code.is_not(None)),
                sa.func.coalesce(
                    sa.func.sum(bitmap.c.cardinality).filter(bitmap.c.kind == "universe"), 0
                ),
                sa.func.count()
                .filter(bitmap.c.kind == "segment", bitmap.c.chunk_version_id.is_(None))
                .label("rewritten"),
            ).where(bitmap.c.version_id == plan.version_id)
        ).one()
        written = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(sa.func.length(bitmap_chunk.c.payload)), 0),
            ).where(
                bitmap_chunk.c.version_id == plan.version_id, bitmap_chunk.c.payload.is_not(None)
            )
        ).one()
        totals = SealedTotals(
            identity_count=int(counts[2]),
            segments=int(counts[0]),
            failed_segments=int(counts[1]),
            atoms=0,
            chunks=int(written[0]),
            bytes=int(written[1]),
            shared_bytes=int(row.shared_byte_size or 0),
            reevaluated_segments=int(counts[0]) + int(counts[1]),
            reused_segments=0,
        )
        mark_sealed(
            conn, plan.version_id, now=now, identity_count=totals.identity_count,
            totals=totals.counts(),
        )  # fmt: skip
        conn.execute(
            version.update()
            .where(version.c.version_id == plan.version_id)
            .values(reevaluated_segment_count=int(counts[3]), reused_segment_count=0)
        )
    log_sealed(plan.environment_key, plan.version_id, totals.identity_count, totals.counts())
    return totals


def _touched(base: list[_BaseChunk], changed: BitMap) -> dict[int, BitMap]:
    """The changed ids by the position of the chunk whose id range holds (or would hold) them:
    chunk ``p`` covers ids from its first (0 for the first chunk) up to the next chunk's."""
    touched: dict[int, BitMap] = {}
    start = 0
    for position in range(len(base)):
        # ids below the next chunk's first id (rank: how many changed ids are ≤ a value)
        end = changed.rank(base[position + 1].min_id - 1) if position + 1 < len(base) else None
        ids = changed[start:end]
        if ids:
            touched[position] = BitMap(ids)
        start = end if end is not None else len(changed)
    return touched


def _touched_payloads(
    cache: ChunkCache, chunks: dict[tuple[str, str], list[_BaseChunk]], changed: BitMap
) -> dict[ChunkKey, FrozenBitMap]:
    """Every base chunk a changed id falls in (chunks are immutable: the cache's copies, else
    read in a few queries, never one per bitmap)."""
    return cache.get(
        sorted(
            {
                (base[p].owner, kind, key, base[p].owner_index)
                for (kind, key), base in chunks.items()
                for p in _touched(base, changed)
            }
        )
    )


def _rebuild(
    base: list[_BaseChunk],
    payloads: dict[ChunkKey, FrozenBitMap],
    kind: str,
    key: str,
    changed: BitMap,
    answer: BitMap,
    chunk_bytes: int,
) -> list[_BaseChunk | Any] | None:
    """The bitmap's chunks after the change (base chunks kept as they are, new ones from
    ``split_bitmap``), or None when no bit changed."""
    if not base:
        return split_bitmap(answer, chunk_bytes) if answer else None
    touched = _touched(base, changed)
    rebuilt: list[_BaseChunk | Any] = []
    any_change = False
    for position, chunk in enumerate(base):
        ids = touched.get(position)
        if ids is None:
            rebuilt.append(chunk)
            continue
        old = payloads[(chunk.owner, kind, key, chunk.owner_index)]
        if (old & ids) == (answer & ids):
            rebuilt.append(chunk)
            continue
        any_change = True
        rebuilt.extend(split_bitmap((BitMap(old) - ids) | (answer & ids), chunk_bytes))
    return rebuilt if any_change else None


def _base_directory(conn: sa.Connection, base_id: int | None) -> dict[tuple[str, str], sa.Row]:
    rows = conn.execute(
        sa.select(
            bitmap.c.kind,
            bitmap.c.key,
            bitmap.c.name,
            bitmap.c.cardinality,
            bitmap.c.byte_size,
            bitmap.c.chunk_count,
            bitmap.c.error_code,
            bitmap.c.error_message,
            bitmap.c.definition_digest,
            chunk_owner().label("owner"),
            sa.func.coalesce(
                bitmap.c.evaluated_as_of,
                sa.select(version.c.as_of).where(version.c.version_id == base_id).scalar_subquery(),
            ).label("evaluated_as_of"),
        ).where(bitmap.c.version_id == base_id, bitmap.c.kind != "atom")
    ).all()
    return {(r.kind, r.key): r for r in rows}


def _base_chunks(
    conn: sa.Connection, base_id: int | None
) -> dict[tuple[str, str], list[_BaseChunk]]:
    """Every chunk of the base's bitmaps, in order, resolved to the row holding its payload."""
    rows = conn.execute(
        sa.select(
            bitmap.c.kind,
            bitmap.c.key,
            bitmap_chunk.c.min_id,
            bitmap_chunk.c.max_id,
            bitmap_chunk.c.cardinality,
            payload_version().label("owner"),
            payload_index().label("owner_index"),
            sa.func.coalesce(sa.func.length(bitmap_chunk.c.payload), -1).label("size"),
        )
        .select_from(bitmap.join(bitmap_chunk, chunks_of_bitmap()))
        .where(bitmap.c.version_id == base_id, bitmap.c.kind != "atom")
        .order_by(bitmap.c.kind, bitmap.c.key, bitmap_chunk.c.chunk_index)
    ).all()
    found: dict[tuple[str, str], list[_BaseChunk]] = {}
    for r in rows:
        found.setdefault((r.kind, r.key), []).append(
            _BaseChunk(r.min_id, r.max_id, r.cardinality, r.owner, r.owner_index, max(r.size, 0))
        )
    return found


def _shared_row(plan: StagedPlan, base_row: sa.Row) -> dict[str, Any]:
    return {
        "version_id": plan.version_id,
        "kind": base_row.kind,
        "key": base_row.key,
        "name": base_row.name,
        "cardinality": base_row.cardinality,
        "byte_size": base_row.byte_size,
        "chunk_count": base_row.chunk_count,
        "error_code": base_row.error_code,
        "error_message": base_row.error_message,
        "chunk_version_id": base_row.owner,
        "evaluated_as_of": base_row.evaluated_as_of,
        "definition_digest": base_row.definition_digest,
    }


def _universe_max(conn: sa.Connection, version_id: int) -> int | None:
    value = conn.execute(
        sa.select(sa.func.max(bitmap_chunk.c.max_id))
        .select_from(bitmap.join(bitmap_chunk, chunks_of_bitmap()))
        .where(bitmap.c.version_id == version_id, bitmap.c.kind == "universe")
    ).scalar()
    return None if value is None else int(value)
