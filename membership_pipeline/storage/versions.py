"""Writing a version in the shadow, publishing it with one flip, and rolling back.

A ``ShadowVersion`` belongs to a claim. Its rows are committed as they are written (a large
environment never needs one huge transaction) but no reader looks at them: readers only follow
``membership_environment.published_version_id``. ``publish`` moves that pointer, marks the backfill
``succeeded`` and retires the previous version in one transaction, so its cost does not depend on
the size of the version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pyroaring import BitMap, FrozenBitMap

from membership_pipeline.storage.chunking import DEFAULT_CHUNK_BYTES, split_bitmap
from membership_pipeline.storage.claims import RUNNING, Claim, end_claim
from membership_pipeline.storage.database import StoreDatabase
from membership_pipeline.storage.environment_metadata import BackfillStatus
from membership_pipeline.storage.errors import ClaimLost, InvalidVersion, RollbackUnavailable
from membership_pipeline.storage.tables import bitmap, bitmap_chunk, environment, version
from membership_pipeline.structured_logging import get_logger

log = get_logger("store")

BitmapKind = Literal["universe", "segment", "atom"]
UNIVERSE_KEY = ""
_FLUSH_BYTES = 8 << 20  # write buffered chunk rows in batches of about this size
_KEY_CHARS = 255


@dataclass(frozen=True)
class Publication:
    environment_key: str
    version_id: int
    previous_version_id: int | None
    publication: int
    published_at: datetime


class ShadowVersion:
    """A version being written. Add the universe (every identity id), each segment's bitmap (or
    its failure) and optionally shared atoms, then ``seal``; then ``publish`` it."""

    def __init__(
        self,
        database: StoreDatabase,
        held: Claim,
        *,
        as_of: datetime,
        now: datetime,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self._database = database
        self.claim = held
        self.chunk_bytes = chunk_bytes
        self._bitmap_rows: list[dict[str, Any]] = []
        self._chunk_rows: list[dict[str, Any]] = []
        self._buffered_bytes = 0
        self._keys: set[tuple[str, str]] = set()
        self._totals = {"segment": 0, "failed": 0, "atom": 0, "chunks": 0, "bytes": 0}
        self._identity_count: int | None = None
        self.sealed = False
        with database.writer.begin() as conn:
            holds = conn.execute(
                sa.select(environment.c.environment_key).where(
                    environment.c.environment_key == held.environment_key,
                    environment.c.claim_token == held.token,
                    environment.c.last_backfill_status == RUNNING,
                )
            ).first()
            if holds is None:
                raise ClaimLost(f"cannot stage a version of {held.environment_key!r}: claim lost")
            self.version_id: int = conn.execute(
                version.insert()
                .values(
                    environment_key=held.environment_key,
                    state="shadow",
                    claim_token=held.token,
                    created_at=now,
                    as_of=as_of,
                )
                .returning(version.c.version_id)
            ).scalar_one()

    def add_universe(self, identities: BitMap | FrozenBitMap) -> None:
        self._identity_count = len(identities)
        self._add("universe", UNIVERSE_KEY, None, identities)

    def add_segment(self, key: str, name: str | None, members: BitMap | FrozenBitMap) -> None:
        self._add("segment", key, name, members)
        self._totals["segment"] += 1

    def add_failed_segment(self, key: str, name: str | None, code: str, message: str) -> None:
        self._check_key("segment", key)
        self._bitmap_rows.append(
            self._bitmap_row("segment", key, name, 0, 0, 0)
            | {
                "error_code": code[:64],
                "error_message": message,
            }
        )
        self._totals["failed"] += 1

    def add_atom(self, key: str, label: str | None, members: BitMap | FrozenBitMap) -> None:
        self._add("atom", key, label, members)
        self._totals["atom"] += 1

    def seal(self, *, now: datetime) -> None:
        """Write what is buffered and mark the version complete (still unpublished)."""
        if self._identity_count is None:
            raise InvalidVersion(
                f"version {self.version_id} of {self.claim.environment_key!r} has no universe: "
                "call add_universe with every identity id"
            )
        with self._database.writer.begin() as conn:
            self._require_shadow(conn)
            self._write_buffer(conn)
            conn.execute(
                version.update()
                .where(version.c.version_id == self.version_id)
                .values(
                    state="sealed",
                    sealed_at=now,
                    identity_count=self._identity_count,
                    segment_count=self._totals["segment"] + self._totals["failed"],
                    failed_segment_count=self._totals["failed"],
                    atom_count=self._totals["atom"],
                    chunk_count=self._totals["chunks"],
                    byte_size=self._totals["bytes"],
                )
            )
        self.sealed = True
        log.info(
            "segment_membership.store.shadow_written",
            environment=self.claim.environment_key,
            version=self.version_id,
            identities=self._identity_count,
            segments=self._totals["segment"],
            failed_segments=self._totals["failed"],
            atoms=self._totals["atom"],
            chunks=self._totals["chunks"],
            bytes=self._totals["bytes"],
        )

    @property
    def byte_size(self) -> int:
        return self._totals["bytes"]

    def _add(
        self, kind: BitmapKind, key: str, name: str | None, members: BitMap | FrozenBitMap
    ) -> None:
        self._check_key(kind, key)
        if self.sealed:
            raise InvalidVersion(f"version {self.version_id} is sealed; it cannot change")
        chunks = split_bitmap(members, self.chunk_bytes)
        size = sum(len(chunk.payload) for chunk in chunks)
        self._bitmap_rows.append(self._bitmap_row(kind, key, name, len(members), size, len(chunks)))
        for chunk in chunks:
            self._chunk_rows.append(
                {
                    "version_id": self.version_id,
                    "kind": kind,
                    "key": key,
                    "chunk_index": chunk.index,
                    "min_id": chunk.min_id,
                    "max_id": chunk.max_id,
                    "cardinality": chunk.cardinality,
                    "payload": chunk.payload,
                }
            )
        self._totals["chunks"] += len(chunks)
        self._totals["bytes"] += size
        self._buffered_bytes += size
        if self._buffered_bytes >= _FLUSH_BYTES:
            self._flush()

    def _check_key(self, kind: str, key: str) -> None:
        if not isinstance(key, str) or len(key) > _KEY_CHARS or (kind != "universe" and not key):
            raise InvalidVersion(f"invalid {kind} key {key!r}: a string of 1-{_KEY_CHARS} chars")
        if (kind, key) in self._keys:
            raise InvalidVersion(f"{kind} {key!r} added twice to version {self.version_id}")
        self._keys.add((kind, key))

    def _bitmap_row(
        self, kind: str, key: str, name: str | None, cardinality: int, size: int, chunks: int
    ) -> dict[str, Any]:
        return {
            "version_id": self.version_id,
            "kind": kind,
            "key": key,
            "name": name,
            "cardinality": cardinality,
            "byte_size": size,
            "chunk_count": chunks,
            "error_code": None,
            "error_message": None,
        }

    def _flush(self) -> None:
        if self._bitmap_rows:
            with self._database.writer.begin() as conn:
                self._require_shadow(conn)
                self._write_buffer(conn)

    def _require_shadow(self, conn: sa.Connection) -> None:
        """Lock the version row; it is gone when its claim was failed or reconciled meanwhile."""
        still_shadow = conn.execute(
            sa.select(version.c.version_id)
            .where(
                version.c.version_id == self.version_id,
                version.c.state == "shadow",
                version.c.claim_token == self.claim.token,
            )
            .with_for_update()
        ).first()
        if still_shadow is None:
            raise ClaimLost(
                f"version {self.version_id} of {self.claim.environment_key!r} was discarded "
                "while it was written (its claim was failed or reconciled)"
            )

    def _write_buffer(self, conn: sa.Connection) -> None:
        if self._bitmap_rows:
            conn.execute(bitmap.insert(), self._bitmap_rows)
        if self._chunk_rows:
            conn.execute(bitmap_chunk.insert(), self._chunk_rows)
        self._bitmap_rows, self._chunk_rows, self._buffered_bytes = [], [], 0


def publish(
    database: StoreDatabase, held: Claim, shadow: ShadowVersion, *, now: datetime
) -> Publication:
    """The flip: pointer → the sealed version, status ``succeeded``, previous version retired."""
    if not shadow.sealed:
        raise InvalidVersion(f"version {shadow.version_id} must be sealed before it is published")
    with database.writer.begin() as conn:
        totals = conn.execute(
            sa.select(version).where(
                version.c.version_id == shadow.version_id,
                version.c.environment_key == held.environment_key,
                version.c.claim_token == held.token,
                version.c.state == "sealed",
            )
        ).one_or_none()
        if totals is None:
            raise ClaimLost(
                f"version {shadow.version_id} of {held.environment_key!r} was discarded"
            )
        succeeded = end_claim(
            held.environment_key, held.token, BackfillStatus.SUCCEEDED, now=now, error=None
        )
        flipped = conn.execute(
            succeeded.values(**_pointer_values(totals, now)).returning(environment.c.publication)
        ).one_or_none()
        if flipped is None:
            raise ClaimLost(
                f"the claim of {held.owner} on {held.environment_key!r} no longer holds; "
                f"version {shadow.version_id} was not published"
            )
        previous_id = _retire_published(conn, held.environment_key, shadow.version_id, now)
        conn.execute(
            version.update()
            .where(version.c.version_id == shadow.version_id)
            .values(state="published", published_at=now)
        )
    publication = Publication(
        held.environment_key, shadow.version_id, previous_id, flipped.publication, now
    )
    log.info(
        "segment_membership.store.published",
        environment=held.environment_key,
        version=shadow.version_id,
        previous_version=previous_id,
        publication=publication.publication,
        identities=totals.identity_count,
        segments=totals.segment_count,
    )
    return publication


def rollback(
    database: StoreDatabase, environment_key: str, *, now: datetime, to_version: int | None = None
) -> Publication:
    """Flip the pointer back to a retired version (the newest one unless ``to_version``)."""
    with database.writer.begin() as conn:
        current = conn.execute(
            sa.select(environment)
            .where(environment.c.environment_key == environment_key)
            .with_for_update()
        ).one_or_none()
        if current is None or current.published_version_id is None:
            raise RollbackUnavailable(f"environment {environment_key!r} has no published version")
        if current.last_backfill_status == RUNNING:
            raise RollbackUnavailable(
                f"environment {environment_key!r} has a backfill running "
                f"({current.claim_owner}); roll back after it ends"
            )
        candidates = sa.select(version).where(
            version.c.environment_key == environment_key, version.c.state == "retired"
        )
        if to_version is not None:
            candidates = candidates.where(version.c.version_id == to_version)
        target = conn.execute(candidates.order_by(version.c.version_id.desc()).limit(1)).first()
        if target is None:
            wanted = f"version {to_version}" if to_version is not None else "earlier version"
            raise RollbackUnavailable(
                f"environment {environment_key!r} has no {wanted} kept for rollback"
            )
        # Take the target first: a concurrent garbage collection deletes only retired rows.
        taken = conn.execute(
            version.update()
            .where(version.c.version_id == target.version_id, version.c.state == "retired")
            .values(state="published", published_at=now, retired_at=None)
        ).rowcount
        if not taken:
            raise RollbackUnavailable(f"version {target.version_id} was just garbage-collected")
        _retire_published(conn, environment_key, target.version_id, now)
        flipped = conn.execute(
            environment.update()
            .where(environment.c.environment_key == environment_key)
            .values(**_pointer_values(target, now))
            .returning(environment.c.publication)
        ).scalar_one()
    log.warning(
        "segment_membership.store.rolled_back",
        environment=environment_key,
        version=target.version_id,
        previous_version=current.published_version_id,
        publication=flipped,
    )
    return Publication(
        environment_key, target.version_id, current.published_version_id, flipped, now
    )


def _pointer_values(target: sa.Row[Any], now: datetime) -> Mapping[str, Any]:
    return {
        "published_version_id": target.version_id,
        "publication": environment.c.publication + 1,
        "published_at": now,
        "published_as_of": target.as_of,
        "published_identity_count": target.identity_count,
        "published_segment_count": target.segment_count,
        "updated_at": now,
    }


def _retire_published(
    conn: sa.Connection, environment_key: str, replacement: int, now: datetime
) -> int | None:
    return conn.execute(
        version.update()
        .where(
            version.c.environment_key == environment_key,
            version.c.state == "published",
            version.c.version_id != replacement,
        )
        .values(state="retired", retired_at=now)
        .returning(version.c.version_id)
    ).scalar_one_or_none()
