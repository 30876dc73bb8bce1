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

from membership_pipeline.sharding.shard_plan import CHUNK_INDEX_STRIDE, ShardSpec
from membership_pipeline.storage.bitmap_writer import BitmapWriter
from membership_pipeline.storage.claims import Claim, running_claim
from membership_pipeline.storage.database import StoreDatabase
from membership_pipeline.storage.errors import ClaimLost, InvalidVersion
from membership_pipeline.storage.tables import (
    bitmap,
    bitmap_chunk,
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

    @property
    def environment_key(self) -> str:
        return self.claim.environment_key

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
    bytes: int

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
    segments: Sequence[Mapping[str, Any]],
    identity_count: int,
    shard_identities: int,
    shards: Sequence[ShardSpec],
) -> StagedPlan:
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
            )
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
    )


def load_plan(database: StoreDatabase, environment_key: str, owner: str) -> StagedPlan:
    """The plan of the running backfill of ``environment_key`` claimed by ``owner`` (a run id);
    ``ClaimLost`` when that claim no longer holds or its shadow version is gone."""
    with database.reader.connect() as conn:
        claim = running_claim(conn, environment_key, owner)
        found = None
        if claim is not None:
            found = conn.execute(
                sa.select(version.c.version_id, version.c.as_of, version_plan)
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
        merged, failed_keys = _merge_parts(parts, len(plan.shards), plan.version_id)
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
        totals = _totals(merged)
        mark_sealed(
            conn,
            plan.version_id,
            now=now,
            identity_count=totals.identity_count,
            totals=totals.counts(),
        )
    log_sealed(plan.environment_key, plan.version_id, totals.identity_count, totals.counts())
    return totals


def _merge_parts(
    parts: Sequence[sa.Row[Any]], shard_count: int, version_id: int
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
    if not any(row["kind"] == "universe" for row in merged):
        raise InvalidVersion(f"version {version_id} has no universe in its shards")
    return merged, failed_keys


def _totals(merged: Sequence[Mapping[str, Any]]) -> SealedTotals:
    segments = [r for r in merged if r["kind"] == "segment"]
    failed = sum(1 for r in segments if r["error_code"] is not None)
    return SealedTotals(
        identity_count=sum(r["cardinality"] for r in merged if r["kind"] == "universe"),
        segments=len(segments) - failed,
        failed_segments=failed,
        atoms=sum(1 for r in merged if r["kind"] == "atom"),
        chunks=sum(r["chunk_count"] for r in merged),
        bytes=sum(r["byte_size"] for r in merged),
    )
