"""Sharded backfills: a chunk belongs to its version rather than to a directory row (shards write
chunks before the merged directory exists), and the plan, shard and per-shard bitmap tables.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)
VersionId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CHUNK_TO_VERSION = "fk_membership_bitmap_chunk_version"
# SQLite's foreign keys have no names; batch mode recreates the table and needs one to drop.
NAMING = {"fk": "fk_%(table_name)s_%(referred_table_name)s"}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table(
            "membership_bitmap_chunk", recreate="always", naming_convention=NAMING
        ) as batch:
            batch.drop_constraint("fk_membership_bitmap_chunk_membership_bitmap", "foreignkey")
            batch.create_foreign_key(
                CHUNK_TO_VERSION,
                "membership_version",
                ["version_id"],
                ["version_id"],
                ondelete="CASCADE",
            )
    else:
        for foreign_key in sa.inspect(bind).get_foreign_keys("membership_bitmap_chunk"):
            op.drop_constraint(foreign_key["name"], "membership_bitmap_chunk", type_="foreignkey")
        op.create_foreign_key(
            CHUNK_TO_VERSION,
            "membership_bitmap_chunk",
            "membership_version",
            ["version_id"],
            ["version_id"],
            ondelete="CASCADE",
        )
    version_fk = sa.ForeignKey("membership_version.version_id", ondelete="CASCADE")
    op.create_table(
        "membership_version_plan",
        sa.Column("version_id", VersionId, version_fk, primary_key=True),
        sa.Column("environment", sa.Text(), nullable=False),
        sa.Column("segments", sa.Text(), nullable=False),
        sa.Column("identity_count", sa.BigInteger(), nullable=False),
        sa.Column("shard_identities", sa.BigInteger(), nullable=False),
        sa.Column("shard_count", sa.Integer(), nullable=False),
    )
    op.create_table(
        "membership_shard",
        sa.Column(
            "version_id",
            VersionId,
            sa.ForeignKey("membership_version.version_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("shard_index", sa.Integer(), primary_key=True),
        sa.Column("first_id", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt_token", sa.String(32)),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("started_at", Timestamp),
        sa.Column("staged_at", Timestamp),
        sa.Column("identity_count", sa.BigInteger()),
        sa.Column("report", sa.Text()),
    )
    op.create_table(
        "membership_shard_bitmap",
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


def downgrade() -> None:
    op.drop_table("membership_shard_bitmap")
    op.drop_table("membership_shard")
    op.drop_table("membership_version_plan")
