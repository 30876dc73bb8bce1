"""The dispatcher's tables, on the store database's one ``MetaData``: the durable request queue,
the dedup locks and the launch log (migration 0002; segments since 0006)."""

from __future__ import annotations

import sqlalchemy as sa

from membership_pipeline.database.metadata import metadata
from membership_pipeline.database.timestamps import UtcDateTime

backfill_request = sa.Table(
    "membership_backfill_request",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("dedup_key", sa.String(512), nullable=False),
    sa.Column("organisation", sa.String(255), nullable=False),
    sa.Column("environment_key", sa.String(255), nullable=False, index=True),
    sa.Column("window_start", UtcDateTime(), nullable=False),
    sa.Column("window_end", UtcDateTime(), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("max_attempts", sa.Integer(), nullable=False),
    sa.Column("force", sa.Boolean(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("coalesced", sa.Text(), nullable=False),  # space-separated job ids merged in
    # Segment keys (space-separated) a segments-only request concerns; null: a full backfill.
    sa.Column("segments", sa.Text()),
    sa.Column("segment_total", sa.Integer()),  # segments of the environment when requested
    # Identities captured from the replication stream (migration 0008): a delta backfill of the
    # store's pending identities.
    sa.Column("delta", sa.Boolean(), nullable=False, server_default=sa.false()),
)

dedup_lock = sa.Table(
    "membership_dedup_lock",
    metadata,
    sa.Column("dedup_key", sa.String(512), primary_key=True),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
    sa.Column("job_id", sa.String(64), nullable=False),
)

launch = sa.Table(
    "membership_launch",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("organisation", sa.String(255), nullable=False),
    sa.Column("environment_key", sa.String(255), nullable=False),
    sa.Column("launched_at", UtcDateTime(), nullable=False, index=True),
    sa.Column("delta", sa.Boolean(), nullable=False, server_default="0"),  # its own cap
)
