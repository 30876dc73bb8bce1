"""Writing an identity-delta version: the published (base) version with the changed identities'
answers replaced, writing what changed rather than the chunks that hold it.

For every bitmap of the base (its universe and each segment), the changed ids are assigned to the
chunk whose id range would hold them. A chunk whose bits for those ids are unchanged is
**linked** (a chunk row without payload naming the row it shows). One whose bits changed becomes
a **patched link**: its underlying payload's row, and the ids to remove from and add to that
payload (``patch_removed``, ``patch_added``). Patches accumulate over deltas, always relative to
the payload, so a version many deltas deep still reads each chunk as one payload and at most one
patch; once a chunk's patch outgrows a quarter of its payload the chunk is rewritten whole (and
split again if it outgrew the chunk size). A bitmap with no changed chunk is shared whole, as an
incremental version shares it. A segment new or edited since the base (``DeltaAnswers.rebuilt``)
was evaluated on every identity and is written whole; one deleted since is left out.

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
from membership_pipeline.storage.chunking import DEFAULT_CHUNK_BYTES, Chunk, split_bitmap
from membership_pipeline.storage.identity_answers import (
    PreviousAnswers,
    delete_staged_answers,
    previous_answers,
    replacement_rows,
)
from membership_pipeline.storage.plans import StagedPlan
from membership_pipeline.storage.reader import ChunkCache, ChunkKey
from membership_pipeline.storage.sealing import SealedTotals
from membership_pipeline.storage.tables import (
    bitmap,
    bitmap_chunk,
    chunk_owner,
    chunks_of_bitmap,
    content_index,
    content_version,
    identity_answers,
    shard,
    stored_bytes,
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
    # Segments evaluated on every identity (new or edited since the base): ``segments`` holds
    # all their members, and they are written whole.
    rebuilt: frozenset[str] = frozenset()


@dataclass
class DeltaTotals:
    identities: int = 0  # re-evaluated
    segments_rebuilt: int = 0  # evaluated on every identity (edited since the base)
    bitmaps_rewritten: int = 0
    bitmaps_shared: int = 0
    chunks_written: int = 0  # rewritten whole
    chunks_patched: int = 0
    chunks_linked: int = 0
    bytes_written: int = 0  # payloads and patches
    bytes_shared: int = 0  # what the links and shared bitmaps show, written by earlier versions
    payload_bytes_read: int = 0  # payloads under chunks computed from them
    answer_rows_read: int = 0  # of the answers by identity (0: none describe the base)
    answer_rows_written: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


_LINK_COLUMNS = ("payload", "source_version_id", "source_chunk_index", "patch_removed",
                 "patch_added")  # fmt: skip
PATCH_SHARE = 4  # a patch larger than 1/PATCH_SHARE of its payload: the chunk is rewritten
STREAM_BATCH_BYTES = 64 << 20  # payloads read at once when they do not fit the chunk cache


@dataclass(frozen=True)
class _BaseChunk:
    """A chunk of the base as its directory row names it: what it shows (``content``, the row
    a link names) and the payload underneath (the same row, unless that row is a patch)."""

    min_id: int
    max_id: int
    cardinality: int
    content: tuple[int, int]  # version, chunk index of the row it shows
    payload: tuple[int, int]  # version, chunk index of the row holding the payload
    size: int  # bytes behind it: payload, and patch if any
    payload_size: int

    @property
    def patched(self) -> bool:
        return self.content != self.payload


@dataclass(frozen=True)
class _Patch:
    """A changed chunk written as a patch over its base's payload."""

    min_id: int
    max_id: int
    cardinality: int
    payload: tuple[int, int]
    payload_size: int
    removed: bytes
    added: bytes


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
    ``report``. ``chunks_cache`` holds deserialized payloads across deltas (a long-running
    process reads each once while they fit; a later delta reads only the patches over them)."""
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
        evaluated = {
            (kind, key): answers.universe if kind == "universe" else answers.segments[key]
            for kind, key in wanted
            if kind == "universe" or (key in answers.segments and key not in answers.rebuilt)
        }
        conn.execute(delete_staged_answers(plan.environment_key, plan.version_id))
        previous = previous_answers(conn, plan.environment_key, base_id, answers.changed)
        changed = _changed_chunks(
            chunks_cache, chunks, evaluated, answers.changed, chunk_bytes, previous, totals
        )
        rows, chunk_rows = [], []
        for kind, key in wanted:
            if kind == "segment" and key in answers.rebuilt:
                row, pieces = _rebuilt_segment(plan, answers, key, digests[key], chunk_bytes)
                rows.append(row)
                chunk_rows.extend(pieces)
                totals.segments_rebuilt += 1
                totals.chunks_written += len(pieces)
                totals.bytes_written += row["byte_size"]
                continue
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
            rebuilt = _rebuild(
                chunks.get((kind, key), []), changed.get((kind, key), {}), evaluated[(kind, key)],
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
                row = dict.fromkeys(_LINK_COLUMNS) | {
                    "version_id": plan.version_id, "kind": kind, "key": key, "chunk_index": index,
                }  # fmt: skip
                row |= {"min_id": piece.min_id, "max_id": piece.max_id,
                        "cardinality": piece.cardinality}  # fmt: skip
                if isinstance(piece, _BaseChunk):
                    totals.chunks_linked += 1
                    totals.bytes_shared += piece.size
                    row |= {"source_version_id": piece.content[0],
                            "source_chunk_index": piece.content[1]}  # fmt: skip
                    size += piece.size
                elif isinstance(piece, _Patch):
                    totals.chunks_patched += 1
                    written = len(piece.removed) + len(piece.added)
                    totals.bytes_written += written
                    totals.bytes_shared += piece.payload_size  # the payload under the patch
                    row |= {"source_version_id": piece.payload[0],
                            "source_chunk_index": piece.payload[1],
                            "patch_removed": piece.removed,
                            "patch_added": piece.added}  # fmt: skip
                    size += written + piece.payload_size
                else:
                    totals.chunks_written += 1
                    totals.bytes_written += len(piece.payload)
                    row |= {"payload": piece.payload}
                    size += len(piece.payload)
                cardinality += piece.cardinality
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
        if previous is not None:  # folded into the live answers when this version publishes
            columns = {
                key: members & answers.changed if key in answers.rebuilt else members
                for key, members in answers.segments.items()
            }  # (the rebuilt segments' columns go stale when it publishes)
            staged = replacement_rows(
                previous, plan.version_id, answers.changed, answers.universe, columns
            )
            totals.answer_rows_read = len(previous.rows)
            totals.answer_rows_written = len(staged)
            if staged and conn.dialect.name == "postgresql":
                copy_rows(conn, identity_answers, staged)
            elif staged:
                conn.execute(identity_answers.insert(), staged)
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
    log.info(
        "segment_membership.store.delta_staged",
        environment=plan.environment_key,
        version=plan.version_id,
        base_version=base_id,
        **totals.as_dict(),
    )
    return totals


def _rebuilt_segment(
    plan: StagedPlan, answers: DeltaAnswers, key: str, digest: str, chunk_bytes: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A segment evaluated on every identity: its directory row and its chunks, written whole
    (or its failure)."""
    row = {
        "version_id": plan.version_id, "kind": "segment", "key": key,
        "name": answers.names.get(key), "chunk_version_id": None,
        "evaluated_as_of": plan.as_of, "definition_digest": digest,
        "error_code": None, "error_message": None,
    }  # fmt: skip
    failure = answers.failures.get(key)
    if failure is not None:
        code, message = failure
        return row | {"cardinality": 0, "byte_size": 0, "chunk_count": 0,
                      "error_code": code[:64], "error_message": message}, []  # fmt: skip
    pieces = split_bitmap(answers.segments[key], chunk_bytes)
    chunk_rows = [
        dict.fromkeys(_LINK_COLUMNS)
        | {"version_id": plan.version_id, "kind": "segment", "key": key, "chunk_index": index}
        | {"min_id": piece.min_id, "max_id": piece.max_id, "cardinality": piece.cardinality}
        | {"payload": piece.payload}
        for index, piece in enumerate(pieces)
    ]
    return row | {
        "cardinality": len(answers.segments[key]),
        "byte_size": sum(len(piece.payload) for piece in pieces),
        "chunk_count": len(pieces),
    }, chunk_rows


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
                sa.func.coalesce(sa.func.sum(stored_bytes()), 0),
            ).where(
                bitmap_chunk.c.version_id == plan.version_id,
                sa.or_(
                    bitmap_chunk.c.payload.is_not(None), bitmap_chunk.c.patch_added.is_not(None)
                ),
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


@dataclass(frozen=True)
class _Touched:
    """A base chunk some changed ids fall in."""

    kind: str
    key: str
    position: int
    chunk: _BaseChunk
    ids: BitMap


Pieces = list[_BaseChunk | _Patch | Chunk]


def _changed_chunks(
    cache: ChunkCache,
    chunks: dict[tuple[str, str], list[_BaseChunk]],
    answers: dict[tuple[str, str], BitMap],
    changed: BitMap,
    chunk_bytes: int,
    previous: PreviousAnswers | None,
    totals: DeltaTotals,
) -> dict[tuple[str, str], dict[int, Pieces]]:
    """What each base chunk holding a changed bit becomes (by bitmap and position; a chunk
    absent is unchanged).

    Where the previous answers by identity hold the bitmap's column, the chunk's new patch and
    cardinality follow from which bits flip, and its payload is not read (unless the patch
    outgrows a quarter of it: then it is rewritten). Otherwise the chunk is computed from its
    payload and the base's patch over it: from the cache when every payload touched fits in it
    (a long-running process reads each once), else read in batches of ``STREAM_BATCH_BYTES``
    and dropped after use, so a delta's memory stays bounded whatever the environment's size."""
    work = [
        _Touched(kind, key, position, base[position], ids)
        for (kind, key), base in chunks.items()
        if (kind, key) in answers
        for position, ids in _touched(base, changed).items()
    ]
    patched = sorted(
        {(t.chunk.content[0], t.kind, t.key, t.chunk.content[1]) for t in work if t.chunk.patched}
    )
    patches = cache.patches(patched)
    result: dict[tuple[str, str], dict[int, Pieces]] = {}
    members_before = {
        key: previous.members(key)
        for kind, key in answers
        if previous is not None and previous.usable(key)
    }
    from_payloads = []
    for t in work:
        before = members_before.get(t.key)
        if before is None:
            from_payloads.append(t)
            continue
        content = (t.chunk.content[0], t.kind, t.key, t.chunk.content[1])
        pieces = _repatch(t, patches.get(content), before, answers[(t.kind, t.key)])
        if isinstance(pieces, _Rewrite):
            from_payloads.append(t)
        elif pieces is not None:
            result.setdefault((t.kind, t.key), {})[t.position] = pieces
    sizes = {_payload_key(t): t.chunk.payload_size for t in from_payloads}
    totals.payload_bytes_read = sum(sizes.values())
    if sum(sizes.values()) <= cache.max_bytes // 2:
        batches = [sorted(sizes)]
        fetch = cache.get
    else:
        batches, batch, held = [], [], 0
        for payload_key in sorted(sizes):
            if batch and held + sizes[payload_key] > STREAM_BATCH_BYTES:
                batches.append(batch)
                batch, held = [], 0
            batch.append(payload_key)
            held += sizes[payload_key]
        batches.append(batch)
        fetch = cache.load
    by_payload: dict[ChunkKey, list[_Touched]] = {}
    for touched in from_payloads:
        by_payload.setdefault(_payload_key(touched), []).append(touched)
    for keys in batches:
        payloads = fetch(keys) if keys else {}
        for payload_key in keys:
            for t in by_payload[payload_key]:
                content = (t.chunk.content[0], t.kind, t.key, t.chunk.content[1])
                pieces = _rechunk(
                    t, payloads[payload_key], patches.get(content), answers[(t.kind, t.key)],
                    chunk_bytes,
                )  # fmt: skip
                if pieces is not None:
                    result.setdefault((t.kind, t.key), {})[t.position] = pieces
        del payloads
    return result


class _Rewrite:
    """The chunk is rewritten from its payload."""


_REWRITE = _Rewrite()


def _repatch(
    touched: _Touched,
    patch: tuple[BitMap, BitMap] | None,
    before: BitMap,
    answer: BitMap,
) -> Pieces | _Rewrite | None:
    """The chunk after the change, from which of its bits flip (``before``: the changed ids
    that were members): None when none flips; else its patch over the same payload, or nothing
    when it emptied; ``_REWRITE`` when the patch would outgrow a quarter of the payload. Its id
    range only widens (a removed end id leaves it as it was: ranges only need to cover)."""
    ids, chunk = touched.ids, touched.chunk
    was, now = before & ids, answer & ids
    if was == now:
        return None
    joined, left = now - was, was - now
    removed, added = (BitMap(p) for p in patch) if patch is not None else (BitMap(), BitMap())
    # content = (payload - removed) | added, removed within the payload, added outside it
    unadded = left & added
    added -= unadded
    removed |= left - unadded
    restored = joined & removed
    removed -= restored
    added |= joined - restored
    cardinality = chunk.cardinality - len(left) + len(joined)
    if cardinality == 0:
        return []
    removed.run_optimize()
    added.run_optimize()
    patch_bytes = (removed.serialize(), added.serialize())
    if len(patch_bytes[0]) + len(patch_bytes[1]) > chunk.payload_size // PATCH_SHARE:
        return _REWRITE
    low = min(chunk.min_id, joined.min()) if joined else chunk.min_id
    high = max(chunk.max_id, joined.max()) if joined else chunk.max_id
    return [_Patch(low, high, cardinality, chunk.payload, chunk.payload_size, *patch_bytes)]


def _rechunk(
    touched: _Touched,
    payload: FrozenBitMap,
    patch: tuple[BitMap, BitMap] | None,
    answer: BitMap,
    chunk_bytes: int,
) -> Pieces | None:
    """The chunk after the change: None when its bits for the changed ids are as they were;
    else a patch over its payload, or (once the patch would outgrow a quarter of the payload)
    the chunk rewritten, or nothing when it emptied (its ids fall to the chunk before it)."""
    ids, chunk = touched.ids, touched.chunk
    removed, added = patch if patch is not None else (BitMap(), BitMap())
    if ((payload & ids) - removed) | (added & ids) == answer & ids:
        return None
    now = ((BitMap(payload) - removed) | added) - ids | (answer & ids)
    if not now:
        return []
    removed, added = BitMap(payload) - now, now - payload
    removed.run_optimize()
    added.run_optimize()
    patch_bytes = (removed.serialize(), added.serialize())
    if len(patch_bytes[0]) + len(patch_bytes[1]) <= chunk.payload_size // PATCH_SHARE:
        return [
            _Patch(now.min(), now.max(), len(now), chunk.payload, chunk.payload_size, *patch_bytes)
        ]
    return list(split_bitmap(now, chunk_bytes))


def _rebuild(
    base: list[_BaseChunk], changed: dict[int, Pieces], answer: BitMap, chunk_bytes: int
) -> Pieces | None:
    """The bitmap's chunks after the change (unchanged base chunks kept as they are), or None
    when no bit changed."""
    if not base:
        return list(split_bitmap(answer, chunk_bytes)) if answer else None
    if not changed:
        return None
    rebuilt: Pieces = []
    for position, chunk in enumerate(base):
        rebuilt.extend(changed.get(position, [chunk]))
    return rebuilt


def _payload_key(touched: _Touched) -> ChunkKey:
    return (touched.chunk.payload[0], touched.kind, touched.key, touched.chunk.payload[1])


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
    """Every chunk of the base's bitmaps, in order, with the row it shows and the payload under
    that row."""
    shown = bitmap_chunk.alias("shown")  # the row a link names (or the chunk row itself)
    data = bitmap_chunk.alias("data")  # the row holding the payload under it
    rows = conn.execute(
        sa.select(
            bitmap.c.kind,
            bitmap.c.key,
            bitmap_chunk.c.min_id,
            bitmap_chunk.c.max_id,
            bitmap_chunk.c.cardinality,
            shown.c.version_id.label("shown_version"),
            shown.c.chunk_index.label("shown_index"),
            data.c.version_id.label("data_version"),
            data.c.chunk_index.label("data_index"),
            stored_bytes(shown).label("shown_size"),
            sa.func.length(data.c.payload).label("data_size"),
        )
        .select_from(
            bitmap.join(bitmap_chunk, chunks_of_bitmap())
            .join(
                shown,
                sa.and_(
                    shown.c.version_id == content_version(),
                    shown.c.kind == bitmap_chunk.c.kind,
                    shown.c.key == bitmap_chunk.c.key,
                    shown.c.chunk_index == content_index(),
                ),
            )
            .join(
                data,
                sa.and_(
                    data.c.version_id
                    == sa.func.coalesce(shown.c.source_version_id, shown.c.version_id),
                    data.c.kind == shown.c.kind,
                    data.c.key == shown.c.key,
                    data.c.chunk_index
                    == sa.func.coalesce(shown.c.source_chunk_index, shown.c.chunk_index),
                ),
            )
        )
        .where(bitmap.c.version_id == base_id, bitmap.c.kind != "atom")
        .order_by(bitmap.c.kind, bitmap.c.key, bitmap_chunk.c.chunk_index)
    ).all()
    found: dict[tuple[str, str], list[_BaseChunk]] = {}
    for r in rows:
        patched = (r.shown_version, r.shown_index) != (r.data_version, r.data_index)
        found.setdefault((r.kind, r.key), []).append(
            _BaseChunk(
                r.min_id,
                r.max_id,
                r.cardinality,
                content=(r.shown_version, r.shown_index),
                payload=(r.data_version, r.data_index),
                size=int(r.shown_size) + (int(r.data_size) if patched else 0),
                payload_size=int(r.data_size),
            )
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
