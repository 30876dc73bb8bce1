"""Sharded versions: one shadow version written by many shards, sealed once, published once.

- ``stage_plan`` creates the shadow version with its plan: the segment definitions every shard
  evaluates (read once, so no segment mixes two definitions) and the shards' id ranges.
- ``ShardWriter`` writes one shard's part of every bitmap. Its chunks are numbered from
  ``shard.first_chunk_index``, so they follow ids across shards. Each attempt at a shard takes a
  fresh token: it first deletes what an earlier attempt wrote, and every batch it writes checks
  the token under a row lock, so a retried shard never duplicates or mixes chunks and a stale
  attempt that wakes up late cannot write at all.
- ``seal_shards`` checks that every planned shard is staged and merges the shards' parts into the
  version's directory (``membership_bitmap``), then marks the version sealed. ``publish`` (one
  flip) is unchanged.
- An **incremental** plan evaluates only the new and edited segments; its shards write no
  universe. Sealing adds directory rows for the base version's universe and unchanged segments
  that point at the chunks the base (or the version the base shares them with) wrote: no byte
  is copied, and the base row is locked while the rows that point at it are written, so the
  garbage collector (which re-reads the references after taking that lock) never deletes a
  chunk a version uses.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.sharding.refresh_mode import (
    BaseVersion,
    RefreshDecision,
    RefreshMode,
    SourceMarks,
    definition_digest,
)
from membership_pipeline.sharding.shard_plan import CHUNK_INDEX_STRIDE, ShardSpec
from membership_pipeline.storage.bitmap_writer import BitmapWriter
from membership_pipeline.storage.claims import Claim, running_claim
from membership_pipeline.storage.database import StoreDatabase
from membership_pipeline.storage.errors import ClaimLost, InvalidVersion
from membership_pipeline.storage.tables import (
    VersionId,
    bitmap,
    bitmap_chunk,
    chunks_of_bitmap,
    environment,
    shard,
    shard_bitmap,
    version,
    version_plan,
)
from membership_pipeline.storage.versions import (
    create_shadow,
    log_sealed,
    mark_sealed,
    require_shadow,
)
from membership_pipeline.structured_logging import get_logger

log = get_logger("store")


@dataclass(frozen=True)
class StagedPlan:
    """A sharded backfill's shared state, as the store holds it (any step on any host can read
    it back with ``load_plan``)."""

    claim: Claim
    version_id: int
    as_of: datetime
    environment: dict[str, Any]  # the source's EnvironmentInfo fields
    segments: list[dict[str, Any]]
    identity_count: int
    shard_identities: int
    shards: tuple[ShardSpec, ...]
    # Incremental plans: ``segments`` holds only those re-evaluated (see refresh_mode.py).
    mode: str = RefreshMode.FULL.value
    base_version_id: int | None = None
    reused_segments: tuple[str, ...] = ()
    dropped_segments: tuple[str, ...] = ()
    mode_reason: str = ""

    @property
    def environment_key(self) -> str:
        return self.claim.environment_key

    @property
    def incremental(self) -> bool:
        return self.mode == RefreshMode.INCREMENTAL.value

    def shard(self, mapping_key: str) -> ShardSpec:
        for spec in self.shards:
            if spec.mapping_key == mapping_key:
                return spec
        raise KeyError(f"version {self.version_id} has no shard {mapping_key!r}")


@dataclass(frozen=True)
class ShardReport:
    index: int
    first_id: int
    last_id: int
    state: str
    attempts: int
    identity_count: int | None
    report: dict[str, Any] = field(default_factory=dict)


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


def stage_plan(
    database: StoreDatabase,
    held: Claim,
    *,
    as_of: datetime,
    now: datetime,
    environment_info: Mapping[str, Any],
    display_name: str | None = None,
    segments: Sequence[Mapping[str, Any]],
    identity_count: int,
    shard_identities: int,
    shards: Sequence[ShardSpec],
    refresh: RefreshDecision | None = None,
    marks: SourceMarks | None = None,
) -> StagedPlan:
    """``segments``: those the shards evaluate (an incremental plan's new and edited ones);
    ``marks``: the source as planned, recorded so the next backfill can tell what changed;
    ``display_name``: how people know the environment, recorded on its row."""
    mode = refresh.mode.value if refresh else RefreshMode.FULL.value
    base = refresh.base_version_id if refresh else None
    reused = tuple(refresh.reuse) if refresh and base is not None else ()
    dropped = tuple(refresh.drop) if refresh and base is not None else ()
    reason = refresh.reason if refresh else ""
    version_id = create_shadow(database, held, as_of=as_of, now=now)
    with database.writer.begin() as conn:
        require_shadow(conn, version_id, held)
        conn.execute(
            version_plan.insert().values(
                version_id=version_id,
                environment=json.dumps(dict(environment_info)),
                segments=json.dumps(list(segments)),
                identity_count=identity_count,
                shard_identities=shard_identities,
                shard_count=len(shards),
                reused_segments=json.dumps(list(reused)),
                dropped_segments=json.dumps(list(dropped)),
                mode_reason=reason,
            )
        )
        conn.execute(
            version.update()
            .where(version.c.version_id == version_id)
            .values(
                mode=mode,
                base_version_id=base,
                source_identity_count=marks.identity_count if marks else None,
                source_max_identity_id=marks.max_identity_id if marks else None,
                source_max_trait_id=marks.max_trait_id if marks else None,
                environment_digest=marks.environment_digest if marks else None,
            )
        )
        if display_name:
            conn.execute(
                environment.update()
                .where(environment.c.environment_key == held.environment_key)
                .values(display_name=display_name)
            )
        conn.execute(
            shard.insert(),
            [
                {
                    "version_id": version_id,
                    "shard_index": spec.index,
                    "first_id": spec.first_id,
                    "last_id": spec.last_id,
                    "identity_count": spec.identities,
                    "state": "planned",
                    "attempts": 0,
                }
                for spec in shards
            ],
        )
    log.info(
        "segment_membership.store.shards_planned",
        environment=held.environment_key,
        version=version_id,
        identities=identity_count,
        shards=len(shards),
        shard_identities=shard_identities,
        mode=mode,
    )
    return StagedPlan(
        held,
        version_id,
        as_of,
        dict(environment_info),
        [dict(s) for s in segments],
        identity_count,
        shard_identities,
        tuple(shards),
        mode,
        base,
        reused,
        dropped,
        reason,
    )


def load_plan(database: StoreDatabase, environment_key: str, owner: str) -> StagedPlan:
    """The plan of the running backfill of ``environment_key`` claimed by ``owner`` (a run id);
    ``ClaimLost`` when that claim no longer holds or its shadow version is gone."""
    with database.reader.connect() as conn:
        claim = running_claim(conn, environment_key, owner)
        found = None
        if claim is not None:
            found = conn.execute(
                sa.select(
                    version.c.version_id,
                    version.c.as_of,
                    version.c.mode,
                    version.c.base_version_id,
                    version_plan,
                )
                .join(version_plan, version_plan.c.version_id == version.c.version_id)
                .where(version.c.claim_token == claim.token, version.c.state == "shadow")
            ).one_or_none()
        if claim is None or found is None:
            raise ClaimLost(
                f"the backfill of {environment_key!r} by {owner} no longer holds its claim "
                "(failed, reconciled or finished)"
            )
        shard_rows = conn.execute(
            sa.select(shard)
            .where(shard.c.version_id == found.version_id)
            .order_by(shard.c.shard_index)
        ).all()
    specs = tuple(
        ShardSpec(r.shard_index, r.first_id, r.last_id, r.identity_count or 0) for r in shard_rows
    )
    return StagedPlan(
        claim,
        found.version_id,
        found.as_of,
        json.loads(found.environment),
        json.loads(found.segments),
        found.identity_count,
        found.shard_identities,
        specs,
        found.mode or RefreshMode.FULL.value,
        found.base_version_id,
        tuple(json.loads(found.reused_segments or "[]")),
        tuple(json.loads(found.dropped_segments or "[]")),
        found.mode_reason or "",
    )


class ShardWriter(BitmapWriter):
    """One attempt at writing one shard's part of a version."""

    directory = shard_bitmap

    def __init__(
        self,
        database: StoreDatabase,
        plan: StagedPlan,
        spec: ShardSpec,
        *,
        now: datetime,
        chunk_bytes: int,
    ) -> None:
        super().__init__(
            database,
            plan.version_id,
            chunk_bytes=chunk_bytes,
            first_chunk_index=spec.first_chunk_index,
            chunk_index_limit=spec.first_chunk_index + CHUNK_INDEX_STRIDE - 1,
        )
        self.plan = plan
        self.spec = spec
        self.token = uuid.uuid4().hex
        with database.writer.begin() as conn:
            require_shadow(conn, plan.version_id, plan.claim, exclusive=False)
            previous = conn.execute(
                sa.select(shard.c.attempts).where(*self._this_shard()).with_for_update()
            ).scalar_one_or_none()
            if previous is None:
                raise InvalidVersion(f"version {plan.version_id} has no shard {spec.index}")
            conn.execute(
                shard.update()
                .where(*self._this_shard())
                .values(
                    attempt_token=self.token,
                    state="staging",
                    attempts=previous + 1,
                    started_at=now,
                    staged_at=None,
                    report=None,
                )
            )
            if previous:  # an earlier attempt may have written part of this shard
                conn.execute(shard_bitmap.delete().where(*self._this_shard(shard_bitmap)))
                conn.execute(
                    bitmap_chunk.delete().where(
                        bitmap_chunk.c.version_id == plan.version_id,
                        bitmap_chunk.c.chunk_index.between(
                            spec.first_chunk_index, spec.first_chunk_index + CHUNK_INDEX_STRIDE - 1
                        ),
                    )
                )
        self.attempt = previous + 1

    def finish(self, *, now: datetime, report: Mapping[str, Any]) -> None:
        """Write what is buffered and mark the shard staged, with its report."""
        if self.identity_count is None:
            raise InvalidVersion(f"shard {self.spec.index} has no universe: call add_universe")
        with self._database.writer.begin() as conn:
            self._require_writable(conn)
            self._write_buffer(conn)
            conn.execute(
                shard.update()
                .where(*self._this_shard())
                .values(
                    state="staged",
                    staged_at=now,
                    identity_count=self.identity_count,
                    report=json.dumps(dict(report)),
                )
            )
        self.closed = True
        log.info(
            "segment_membership.store.shard_staged",
            environment=self.plan.environment_key,
            version=self.version_id,
            shard=self.spec.index,
            attempt=self.attempt,
            identities=self.identity_count,
            chunks=self.totals["chunks"],
            bytes=self.totals["bytes"],
        )

    def _directory_row(
        self, kind: str, key: str, name: str | None, cardinality: int, size: int, chunks: int
    ) -> dict[str, Any]:
        row = super()._directory_row(kind, key, name, cardinality, size, chunks)
        return row | {"shard_index": self.spec.index}

    def _require_writable(self, conn: sa.Connection) -> None:
        require_shadow(conn, self.version_id, self.plan.claim, exclusive=False)
        mine = conn.execute(
            sa.select(shard.c.shard_index)
            .where(*self._this_shard(), shard.c.attempt_token == self.token)
            .with_for_update()
        ).first()
        if mine is None:
            raise ClaimLost(
                f"shard {self.spec.index} of version {self.version_id} was taken over by a "
                "newer attempt; this attempt writes nothing more"
            )

    def _this_shard(self, table: sa.Table = shard) -> list[sa.ColumnElement[bool]]:
        return [table.c.version_id == self.version_id, table.c.shard_index == self.spec.index]


def shard_reports(database: StoreDatabase, version_id: int) -> list[ShardReport]:
    with database.reader.connect() as conn:
        rows = conn.execute(
            sa.select(shard).where(shard.c.version_id == version_id).order_by(shard.c.shard_index)
        ).all()
    return [
        ShardReport(
            r.shard_index,
            r.first_id,
            r.last_id,
            r.state,
            r.attempts,
            r.identity_count,
            json.loads(r.report) if r.report else {},
        )
        for r in rows
    ]


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
    base = conn.execute(
        sa.select(version.c.as_of)
        .where(
            version.c.version_id == base_id,
            version.c.environment_key == plan.environment_key,
            version.c.state.in_(("published", "retired")),
        )
        .with_for_update(read=True)
    ).one_or_none()
    if base is None:
        raise InvalidVersion(
            f"version {plan.version_id} builds on version {base_id}, which is no longer kept: "
            "run a full backfill"
        )
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


def refresh_base(database: StoreDatabase, environment_key: str) -> BaseVersion | None:
    """The published version of ``environment_key`` as an incremental backfill's base: its
    source marks and its segments' definition digests."""
    with database.reader.connect() as conn:
        row = conn.execute(
            sa.select(version)
            .join(environment, environment.c.published_version_id == version.c.version_id)
            .where(environment.c.environment_key == environment_key)
        ).one_or_none()
        if row is None:
            return None
        digests = conn.execute(
            sa.select(bitmap.c.key, bitmap.c.definition_digest).where(
                bitmap.c.version_id == row.version_id, bitmap.c.kind == "segment"
            )
        ).all()
    marks = None
    if row.source_identity_count is not None and row.environment_digest is not None:
        marks = SourceMarks(
            row.source_identity_count,
            row.source_max_identity_id,
            row.source_max_trait_id,
            row.environment_digest,
        )
    return BaseVersion(row.version_id, marks, {key: digest for key, digest in digests})


def universe_between(
    database: StoreDatabase, version_id: int, first_id: int, last_id: int
) -> BitMap:
    """The ids of ``version_id``'s universe in ``[first_id, last_id]`` (from the chunks that
    hold them, wherever they were written)."""
    with database.reader.connect() as conn:
        payloads = conn.execute(
            sa.select(bitmap_chunk.c.payload)
            .select_from(bitmap.join(bitmap_chunk, chunks_of_bitmap()))
            .where(
                bitmap.c.version_id == version_id,
                bitmap.c.kind == "universe",
                bitmap_chunk.c.max_id >= first_id,
                bitmap_chunk.c.min_id <= last_id,
            )
        ).scalars()
        ids = BitMap.union(BitMap(), *(BitMap.deserialize(p) for p in payloads))
    in_range = BitMap()
    if last_id >= first_id:
        in_range.add_range(first_id, last_id + 1)
    return ids & in_range
