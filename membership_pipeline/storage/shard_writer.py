"""One shard's part of a sharded version, written by one Dagster step, and the shards' reports.

A ``ShardWriter`` writes one shard's part of every bitmap. Its chunks are numbered from
``shard.first_chunk_index``, so they follow ids across shards. Each attempt at a shard takes a
fresh token: it first deletes what an earlier attempt wrote, and every batch it writes checks the
token under a row lock, so a retried shard never duplicates or mixes chunks and a stale attempt
that wakes up late cannot write at all.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.model.errors import ClaimLost, InvalidVersion
from membership_pipeline.model.shard_plan import CHUNK_INDEX_STRIDE, ShardSpec
from membership_pipeline.storage.bitmap_writer import BitmapWriter
from membership_pipeline.storage.identity_answers import delete_staged_answers
from membership_pipeline.storage.plans import StagedPlan
from membership_pipeline.storage.tables import bitmap_chunk, shard, shard_bitmap
from membership_pipeline.storage.versions import require_shadow
from membership_pipeline.structured_logging import get_logger

log = get_logger("store")


@dataclass(frozen=True)
class ShardReport:
    index: int
    first_id: int
    last_id: int
    state: str
    attempts: int
    identity_count: int | None
    report: dict[str, Any] = field(default_factory=dict)


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
        self.environment_key = plan.environment_key
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
                conn.execute(
                    delete_staged_answers(
                        plan.environment_key, plan.version_id, spec.first_id, spec.last_id
                    )
                )
        self.attempt = previous + 1

    def finish(self, *, now: datetime, report: Mapping[str, Any]) -> None:
        """Write what is buffered and mark the shard staged, with its report."""
        if self.identity_count is None:
            raise InvalidVersion(f"shard {self.spec.index} has no universe: call add_universe")
        with self._database.writer.begin() as conn:
            self._require_writable(conn)
            if self.answer_keys is None and not self.plan.incremental:
                raise InvalidVersion(f"shard {self.spec.index} has no answers: call add_answers")
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
