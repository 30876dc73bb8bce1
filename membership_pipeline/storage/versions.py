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
from typing import Any

import sqlalchemy as sa

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.model.errors import ClaimLost, InvalidVersion, RollbackUnavailable
from membership_pipeline.storage.bitmap_writer import UNIVERSE_KEY, BitmapWriter
from membership_pipeline.storage.chunking import DEFAULT_CHUNK_BYTES
from membership_pipeline.storage.claims import RUNNING, Claim, end_claim
from membership_pipeline.storage.environment_metadata import BackfillStatus
from membership_pipeline.storage.identity_answers import (
    forget_reused_id,
    publish_answers,
    record_answer_keys,
)
from membership_pipeline.storage.pending_identities import clear_covered
from membership_pipeline.storage.publications import announce
from membership_pipeline.storage.tables import bitmap, environment, version
from membership_pipeline.structured_logging import get_logger

log = get_logger("store")

__all__ = [
    "UNIVERSE_KEY",
    "Publication",
    "ShadowVersion",
    "publish",
    "published_source_xmins",
    "rollback",
]


@dataclass(frozen=True)
class Publication:
    environment_key: str
    version_id: int
    previous_version_id: int | None
    publication: int
    published_at: datetime


class ShadowVersion(BitmapWriter):
    """A version being written. Add the universe (every identity id), each segment's bitmap (or
    its failure) and optionally shared atoms, then ``seal``; then ``publish`` it."""

    directory = bitmap

    def __init__(
        self,
        database: StoreDatabase,
        held: Claim,
        *,
        as_of: datetime,
        now: datetime,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.claim = held
        self.environment_key = held.environment_key
        version_id = create_shadow(database, held, as_of=as_of, now=now)
        super().__init__(database, version_id, chunk_bytes=chunk_bytes)

    @property
    def sealed(self) -> bool:
        return self.closed

    def seal(self, *, now: datetime) -> None:
        """Write what is buffered and mark the version complete (still unpublished)."""
        if self.identity_count is None:
            raise InvalidVersion(
                f"version {self.version_id} of {self.claim.environment_key!r} has no universe: "
                "call add_universe with every identity id"
            )
        with self._database.writer.begin() as conn:
            self._require_writable(conn)
            self._write_buffer(conn)
            if self.answer_keys is not None:
                record_answer_keys(conn, self.version_id, self.answer_keys)
            mark_sealed(
                conn,
                self.version_id,
                now=now,
                identity_count=self.identity_count,
                totals=self.totals,
            )
        self.closed = True
        log_sealed(self.claim.environment_key, self.version_id, self.identity_count, self.totals)

    def _require_writable(self, conn: sa.Connection) -> None:
        require_shadow(conn, self.version_id, self.claim)


def create_shadow(database: StoreDatabase, held: Claim, *, as_of: datetime, now: datetime) -> int:
    """A new shadow version of the claim's environment; ``ClaimLost`` if the claim ended."""
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
        version_id = conn.execute(
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
        forget_reused_id(conn, version_id)
        return version_id


def require_shadow(
    conn: sa.Connection, version_id: int, held: Claim, *, exclusive: bool = True
) -> None:
    """Lock the version row (shared: several shards write at once); it is gone when its claim
    was failed or reconciled meanwhile."""
    still_shadow = conn.execute(
        sa.select(version.c.version_id)
        .where(
            version.c.version_id == version_id,
            version.c.state == "shadow",
            version.c.claim_token == held.token,
        )
        .with_for_update(read=not exclusive)
    ).first()
    if still_shadow is None:
        raise ClaimLost(
            f"version {version_id} of {held.environment_key!r} was discarded "
            "while it was written (its claim was failed or reconciled)"
        )


def mark_sealed(
    conn: sa.Connection,
    version_id: int,
    *,
    now: datetime,
    identity_count: int,
    totals: Mapping[str, int],
) -> None:
    conn.execute(
        version.update()
        .where(version.c.version_id == version_id)
        .values(
            state="sealed",
            sealed_at=now,
            identity_count=identity_count,
            segment_count=totals["segment"] + totals["failed"],
            failed_segment_count=totals["failed"],
            atom_count=totals["atom"],
            chunk_count=totals["chunks"],
            byte_size=totals["bytes"],
        )
    )


def log_sealed(
    environment_key: str, version_id: int, identity_count: int, totals: Mapping[str, int]
) -> None:
    log.info(
        "segment_membership.store.shadow_written",
        environment=environment_key,
        version=version_id,
        identities=identity_count,
        segments=totals["segment"],
        failed_segments=totals["failed"],
        atoms=totals["atom"],
        chunks=totals["chunks"],
        bytes=totals["bytes"],
    )


def publish(database: StoreDatabase, held: Claim, version_id: int, *, now: datetime) -> Publication:
    """The flip: pointer → the sealed version, status ``succeeded``, previous version retired."""
    with database.writer.begin() as conn:
        totals = conn.execute(
            sa.select(version).where(
                version.c.version_id == version_id,
                version.c.environment_key == held.environment_key,
                version.c.claim_token == held.token,
                version.c.state == "sealed",
            )
        ).one_or_none()
        if totals is None:
            raise ClaimLost(
                f"version {version_id} of {held.environment_key!r} was discarded or is not sealed"
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
                f"version {version_id} was not published"
            )
        previous_id = _retire_published(conn, held.environment_key, version_id, now)
        publish_answers(conn, held.environment_key, totals)
        clear_covered(conn, held.environment_key, version_id)
        conn.execute(
            version.update()
            .where(version.c.version_id == version_id)
            .values(state="published", published_at=now)
        )
        announce(conn, held.environment_key)
    publication = Publication(
        held.environment_key, version_id, previous_id, flipped.publication, now
    )
    log.info(
        "segment_membership.store.published",
        environment=held.environment_key,
        version=version_id,
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
        announce(conn, environment_key)
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


def published_source_xmins(database: StoreDatabase) -> dict[str, int | None]:
    """Per environment with a published version: that version's ``source_xmin`` (None:
    unknown), what a new replication slot's first tick compares with its horizon."""
    with database.reader.connect() as conn:
        rows = conn.execute(
            sa.select(environment.c.environment_key, version.c.source_xmin).join(
                version, version.c.version_id == environment.c.published_version_id
            )
        )
        return {key: xmin for key, xmin in rows}
