"""The bitmap store's tables, on the store database's one ``MetaData``. The migrations in
``database/migrations/versions`` create exactly these (a test compares them), so a change here
needs a new migration.

- ``membership_environment``: one row per environment — EnvironmentMembershipMetadata (backfill
  lifecycle, the claim and its lease) and the **pointer** to the published version. Publishing
  and rollback are an update of this one row.
- ``membership_version``: every version written, with its state (``shadow`` while written,
  ``sealed`` when complete, ``published``, ``retired``) and totals.
- ``membership_bitmap``: a version's directory — one row per bitmap (the identity universe, each
  segment, each shared atom) with its cardinality, or the error of a segment that failed.
- ``membership_bitmap_chunk``: serialized Roaring bitmaps, split into id ranges of bounded size.
  A chunk belongs to its version (not to a directory row), so the shards of a sharded backfill
  can write their chunks before the directory that lists them exists.
- ``membership_version_plan``, ``membership_shard``, ``membership_shard_bitmap``: a sharded
  backfill's plan (the segment definitions every shard evaluates, the id ranges), each shard's
  staging state, and each shard's part of every bitmap; sealing merges the parts into
  ``membership_bitmap``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from membership_pipeline.database.metadata import VersionId, metadata
from membership_pipeline.database.timestamps import UtcDateTime

environment = sa.Table(
    "membership_environment",
    metadata,
    sa.Column("environment_key", sa.String(255), primary_key=True),
    sa.Column("last_backfill_status", sa.String(16)),
    sa.Column("last_backfill_started_at", UtcDateTime()),
    sa.Column("last_backfill_completed_at", UtcDateTime()),
    sa.Column("last_error", sa.Text()),
    sa.Column("claim_owner", sa.String(255)),
    sa.Column("claim_token", sa.String(32)),
    sa.Column("claim_lease_expires_at", UtcDateTime()),
    sa.Column("published_version_id", VersionId),
    sa.Column("publication", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("published_at", UtcDateTime()),
    sa.Column("published_as_of", UtcDateTime()),
    sa.Column("published_identity_count", sa.BigInteger()),
    sa.Column("published_segment_count", sa.Integer()),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    # "organisation / project / environment", as its last backfill planned it (migration 0007)
    sa.Column("display_name", sa.Text()),
    # The answers by identity (migration 0010, ``storage.identity_answers``): the version the
    # live rows describe, the version id they are stored under, their column order (JSON keys)
    # and the columns re-evaluated since (JSON keys; stale, not used).
    sa.Column("answers_version_id", VersionId),
    sa.Column("answers_generation_id", VersionId),
    sa.Column("answers_keys", sa.Text()),
    sa.Column("answers_stale", sa.Text()),
)

version = sa.Table(
    "membership_version",
    metadata,
    sa.Column("version_id", VersionId, primary_key=True, autoincrement=True),
    sa.Column("environment_key", sa.String(255), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("claim_token", sa.String(32), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("sealed_at", UtcDateTime()),
    sa.Column("published_at", UtcDateTime()),
    sa.Column("retired_at", UtcDateTime()),
    sa.Column("as_of", UtcDateTime(), nullable=False),
    sa.Column("identity_count", sa.BigInteger()),
    sa.Column("segment_count", sa.Integer()),
    sa.Column("failed_segment_count", sa.Integer()),
    sa.Column("atom_count", sa.Integer()),
    sa.Column("chunk_count", sa.Integer()),
    sa.Column("byte_size", sa.BigInteger()),
    # How it was made (migration 0006): "full", or "incremental" on top of ``base_version_id``
    # (segments re-evaluated, the rest shared with the base); and the source as the backfill
    # saw it, which decides whether the next one may be incremental.
    sa.Column("mode", sa.String(16)),
    sa.Column("base_version_id", VersionId),
    sa.Column("reevaluated_segment_count", sa.Integer()),
    sa.Column("reused_segment_count", sa.Integer()),
    sa.Column("source_identity_count", sa.BigInteger()),
    sa.Column("source_max_identity_id", sa.BigInteger()),
    sa.Column("source_max_trait_id", sa.BigInteger()),
    sa.Column("environment_digest", sa.String(32)),
    # Delta versions (migration 0008): identities re-evaluated, and bytes of the chunks it links
    # to (written by earlier versions) rather than writes.
    sa.Column("delta_identity_count", sa.BigInteger()),
    sa.Column("shared_byte_size", sa.BigInteger()),
    # A full version that wrote its answers by identity (migration 0010): their column order.
    sa.Column("answer_keys", sa.Text()),
    # Every source transaction with a lower id had ended before any part of this version was
    # read (migration 0013; PostgreSQL sources): a full version's plan snapshot's xmin, an
    # incremental or delta version's base's. A replication slot made after that covers it.
    sa.Column("source_xmin", sa.BigInteger()),
)

bitmap = sa.Table(
    "membership_bitmap",
    metadata,
    sa.Column(
        "version_id",
        VersionId,
        sa.ForeignKey("membership_version.version_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("name", sa.Text()),
    sa.Column("cardinality", sa.BigInteger(), nullable=False),
    sa.Column("byte_size", sa.BigInteger(), nullable=False),
    sa.Column("chunk_count", sa.Integer(), nullable=False),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text()),
    # The version whose chunk rows hold this bitmap's bytes: null for its own; another
    # (kept) version's when an incremental version shares an unchanged bitmap (migration 0006).
    sa.Column("chunk_version_id", VersionId, index=True),
    sa.Column("evaluated_as_of", UtcDateTime()),  # the source read this bitmap was computed from
    sa.Column("definition_digest", sa.String(32)),  # of the segment definition evaluated
)

bitmap_chunk = sa.Table(
    "membership_bitmap_chunk",
    metadata,
    sa.Column("version_id", VersionId, primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("chunk_index", sa.Integer(), primary_key=True),
    sa.Column("min_id", sa.BigInteger(), nullable=False),
    sa.Column("max_id", sa.BigInteger(), nullable=False),
    sa.Column("cardinality", sa.BigInteger(), nullable=False),
    # Null for a link (migration 0008): the chunk is ``source_version_id``'s chunk
    # ``source_chunk_index`` of the same bitmap — a payload or a patched link, never a plain link.
    sa.Column("payload", sa.LargeBinary()),
    sa.Column("source_version_id", VersionId),
    sa.Column("source_chunk_index", sa.Integer()),
    # A patched link (migration 0009): the source payload minus ``patch_removed`` plus
    # ``patch_added`` (serialized bitmaps), relative to that payload (patches never chain).
    sa.Column("patch_removed", sa.LargeBinary()),
    sa.Column("patch_added", sa.LargeBinary()),
    sa.Index("ix_membership_bitmap_chunk_source", "source_version_id", "kind", "key"),
    sa.ForeignKeyConstraint(
        ["version_id"],
        ["membership_version.version_id"],
        name="fk_membership_bitmap_chunk_version",
        ondelete="CASCADE",
    ),
)

# Sharded backfills (migration 0003).
version_plan = sa.Table(
    "membership_version_plan",
    metadata,
    sa.Column(
        "version_id",
        VersionId,
        sa.ForeignKey("membership_version.version_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("environment", sa.Text(), nullable=False),  # JSON: flag-engine's EnvironmentContext
    sa.Column("segments", sa.Text(), nullable=False),  # JSON: the SegmentContexts, read once
    sa.Column("identity_count", sa.BigInteger(), nullable=False),  # when planned
    sa.Column("shard_identities", sa.BigInteger(), nullable=False),
    sa.Column("shard_count", sa.Integer(), nullable=False),
    # Incremental plans (migration 0006; the mode and base are the version's): ``segments``
    # holds only those re-evaluated; the base's bitmaps of ``reused_segments`` (JSON keys) are
    # shared, ``dropped_segments`` left out.
    sa.Column("reused_segments", sa.Text()),
    sa.Column("dropped_segments", sa.Text()),
    sa.Column("mode_reason", sa.Text()),
    # Every plan (migration 0008): the capture position of the pending identities it covers
    # (cleared when it publishes); a delta plan's identities (a serialized Roaring bitmap).
    sa.Column("pending_position", sa.BigInteger()),
    sa.Column("delta_identities", sa.LargeBinary()),
    # A delta plan's new and edited segments, evaluated on every identity (migration 0012; JSON
    # keys; its deleted ones are ``dropped_segments``).
    sa.Column("rebuilt_segments", sa.Text()),
)

shard = sa.Table(
    "membership_shard",
    metadata,
    sa.Column(
        "version_id",
        VersionId,
        sa.ForeignKey("membership_version.version_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("shard_index", sa.Integer(), primary_key=True),
    sa.Column("first_id", sa.BigInteger(), nullable=False),
    sa.Column("last_id", sa.BigInteger(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # planned, staging, staged
    sa.Column("attempt_token", sa.String(32)),  # the attempt allowed to write its chunks
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("started_at", UtcDateTime()),
    sa.Column("staged_at", UtcDateTime()),
    sa.Column("identity_count", sa.BigInteger()),
    sa.Column("report", sa.Text()),  # JSON: seconds per phase, audit, trait rows
)

shard_bitmap = sa.Table(
    "membership_shard_bitmap",
    metadata,
    sa.Column("version_id", VersionId, primary_key=True),
    sa.Column("shard_index", sa.Integer(), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("name", sa.Text()),
    sa.Column("cardinality", sa.BigInteger(), nullable=False),
    sa.Column("byte_size", sa.BigInteger(), nullable=False),
    sa.Column("chunk_count", sa.Integer(), nullable=False),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text()),
    sa.ForeignKeyConstraint(
        ["version_id", "shard_index"],
        ["membership_shard.version_id", "membership_shard.shard_index"],
        ondelete="CASCADE",
    ),
)


# Identities whose traits changed, captured from the source's replication stream (migration
# 0008): ``position`` is the stream position of the last change seen for the identity.
pending_identity = sa.Table(
    "membership_pending_identity",
    metadata,
    sa.Column("environment_key", sa.String(255), primary_key=True),
    sa.Column("identity_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger(), nullable=False),
    sa.Column("captured_at", UtcDateTime(), nullable=False),
)


# The published answers by identity (migration 0010, ``storage.identity_answers``): rows of
# consecutive identities, each with one bit per bitmap of the version they describe.
identity_answers = sa.Table(
    "membership_identity_answers",
    metadata,
    sa.Column("environment_key", sa.String(255), primary_key=True),
    sa.Column("version_id", VersionId, primary_key=True, autoincrement=False),
    sa.Column("first_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("last_id", sa.BigInteger(), nullable=False),
    sa.Column("identity_count", sa.Integer(), nullable=False),
    sa.Column("ids", sa.LargeBinary(), nullable=False),  # uint32, ascending
    sa.Column("bits", sa.LargeBinary(), nullable=False),  # identity_count rows of packed bits
    # A delta's staged row: the live row (its first id) it replaces when the delta publishes.
    sa.Column("replaces_first_id", sa.BigInteger()),
)


def chunk_owner() -> sa.ColumnElement[Any]:
    """The version whose chunk rows hold a directory row's bitmap (its own, or a shared one)."""
    return sa.func.coalesce(bitmap.c.chunk_version_id, bitmap.c.version_id)


def content_version() -> sa.ColumnElement[Any]:
    """The version whose chunk row holds what a chunk row shows: itself for a payload or a
    patched link (its patch over its source's payload), a plain link's source otherwise."""
    return sa.case(
        (bitmap_chunk.c.patch_added.is_not(None), bitmap_chunk.c.version_id),
        else_=sa.func.coalesce(bitmap_chunk.c.source_version_id, bitmap_chunk.c.version_id),
    )


def content_index() -> sa.ColumnElement[Any]:
    return sa.case(
        (bitmap_chunk.c.patch_added.is_not(None), bitmap_chunk.c.chunk_index),
        else_=sa.func.coalesce(bitmap_chunk.c.source_chunk_index, bitmap_chunk.c.chunk_index),
    )


def stored_bytes(chunk: sa.Table = bitmap_chunk) -> sa.ColumnElement[Any]:
    """Bytes a chunk row itself stores: its payload, or its patch."""
    return sum(
        (sa.func.coalesce(sa.func.length(column), 0) for column in
         (chunk.c.payload, chunk.c.patch_removed, chunk.c.patch_added)),
        sa.literal(0),
    )  # fmt: skip


def chunks_of_bitmap() -> sa.ColumnElement[bool]:
    """Join condition: the chunk rows of a directory row, wherever they were written."""
    return sa.and_(
        bitmap_chunk.c.version_id == chunk_owner(),
        bitmap_chunk.c.kind == bitmap.c.kind,
        bitmap_chunk.c.key == bitmap.c.key,
    )
