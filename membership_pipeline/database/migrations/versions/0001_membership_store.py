"""The membership store: environment pointer + metadata, versions, bitmap directory, chunks.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

VersionId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "membership_environment",
        sa.Column("environment_key", sa.String(255), primary_key=True),
        sa.Column("last_backfill_status", sa.String(16)),
        sa.Column("last_backfill_started_at", Timestamp),
        sa.Column("last_backfill_completed_at", Timestamp),
        sa.Column("last_error", sa.Text()),
        sa.Column("claim_owner", sa.String(255)),
        sa.Column("claim_token", sa.String(32)),
        sa.Column("claim_lease_expires_at", Timestamp),
        sa.Column("published_version_id", VersionId),
        sa.Column("publication", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("published_at", Timestamp),
        sa.Column("published_as_of", Timestamp),
        sa.Column("published_identity_count", sa.BigInteger()),
        sa.Column("published_segment_count", sa.Integer()),
        sa.Column("updated_at", Timestamp, nullable=False),
    )
    op.create_table(
        "membership_version",
        sa.Column("version_id", VersionId, primary_key=True, autoincrement=True),
        sa.Column("environment_key", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claim_token", sa.String(32), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("sealed_at", Timestamp),
        sa.Column("published_at", Timestamp),
        sa.Column("retired_at", Timestamp),
        sa.Column("as_of", Timestamp, nullable=False),
        sa.Column("identity_count", sa.BigInteger()),
        sa.Column("segment_count", sa.Integer()),
        sa.Column("failed_segment_count", sa.Integer()),
        sa.Column("atom_count", sa.Integer()),
        sa.Column("chunk_count", sa.Integer()),
        sa.Column("byte_size", sa.BigInteger()),
    )
    op.create_index(
        "ix_membership_version_environment_key", "membership_version", ["environment_key"]
    )
    op.create_table(
        "membership_bitmap",
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
    )
    op.create_table(
        "membership_bitmap_chunk",
        sa.Column("version_id", VersionId, primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("chunk_index", sa.Integer(), primary_key=True),
        sa.Column("min_id", sa.BigInteger(), nullable=False),
        sa.Column("max_id", sa.BigInteger(), nullable=False),
        sa.Column("cardinality", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id", "kind", "key"],
            ["membership_bitmap.version_id", "membership_bitmap.kind", "membership_bitmap.key"],
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("membership_bitmap_chunk")
    op.drop_table("membership_bitmap")
    op.drop_index("ix_membership_version_environment_key", "membership_version")
    op.drop_table("membership_version")
    op.drop_table("membership_environment")
