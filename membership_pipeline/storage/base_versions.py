"""Reads of the published version an incremental backfill builds on: its source marks and
definition digests (what decides full or incremental), and its universe within a shard's id
range (what an incremental shard checks the source against)."""

from __future__ import annotations

import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.model.errors import InvalidVersion
from membership_pipeline.model.refresh_mode import BaseVersion, SourceMarks
from membership_pipeline.storage.reader import ChunkCache
from membership_pipeline.storage.tables import (
    bitmap,
    bitmap_chunk,
    chunks_of_bitmap,
    content_index,
    content_version,
    environment,
    version,
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
        newest = conn.execute(
            sa.select(sa.func.max(version.c.version_id)).where(
                version.c.environment_key == environment_key,
                version.c.published_at.is_not(None),
            )
        ).scalar()
    marks = None
    if row.source_identity_count is not None and row.environment_digest is not None:
        marks = SourceMarks(
            row.source_identity_count,
            row.source_max_identity_id,
            row.source_max_trait_id,
            row.environment_digest,
        )
    return BaseVersion(
        row.version_id,
        marks,
        {key: digest for key, digest in digests},
        newest=newest == row.version_id,
    )


def universe_between(
    database: StoreDatabase, chunks: ChunkCache, version_id: int, first_id: int, last_id: int
) -> BitMap:
    """The ids of ``version_id``'s universe in ``[first_id, last_id]`` (from the chunks that
    hold them, wherever they were written)."""
    with database.reader.connect() as conn:
        wanted = conn.execute(
            sa.select(bitmap.c.kind, bitmap.c.key, content_version(), content_index())
            .select_from(bitmap.join(bitmap_chunk, chunks_of_bitmap()))
            .where(
                bitmap.c.version_id == version_id,
                bitmap.c.kind == "universe",
                bitmap_chunk.c.max_id >= first_id,
                bitmap_chunk.c.min_id <= last_id,
            )
        ).all()
    loaded = chunks.get((owner, kind, key, index) for kind, key, owner, index in wanted)
    ids = BitMap.union(BitMap(), *loaded.values())
    in_range = BitMap()
    if last_id >= first_id:
        in_range.add_range(first_id, last_id + 1)
    return ids & in_range


def lock_base(
    conn: sa.Connection, environment_key: str, version_id: int, base_id: int | None
) -> sa.Row:
    """Lock (shared) the published or retired version ``version_id`` builds on, for the
    transaction that writes rows pointing at its chunks: the collector takes the row
    exclusively before it looks for references, so it waits for them and then sees them.
    Returns its row; ``InvalidVersion`` when it is no longer kept."""
    base = conn.execute(
        sa.select(version.c.version_id, version.c.as_of)
        .where(
            version.c.version_id == base_id,
            version.c.environment_key == environment_key,
            version.c.state.in_(("published", "retired")),
        )
        .with_for_update(read=True)
    ).one_or_none()
    if base is None:
        raise InvalidVersion(
            f"version {version_id} builds on version {base_id}, which is no longer kept: run a "
            "full backfill"
        )
    return base
