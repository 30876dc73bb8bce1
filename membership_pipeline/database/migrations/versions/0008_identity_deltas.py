"""Identity-delta versions and change data capture.

- A chunk row may be a **link**: no payload of its own, but the version and chunk index that
  hold its bytes (``source_version_id``, ``source_chunk_index``), so a delta version rewrites only
  the chunks holding a changed bit and links the rest.
- ``membership_pending_identity``: identities whose traits changed (captured from the source's
  replication stream), per environment, with the stream position that saw them last; a delta or
  full backfill that read them clears them when it publishes.
- ``membership_capture``: the replication slot's position as the store recorded it, and its state.
- A queued request may be a delta; a plan records the pending position it covers.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)
VersionId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("membership_bitmap_chunk") as table:
        table.alter_column("payload", existing_type=sa.LargeBinary(), nullable=True)
        table.add_column(sa.Column("source_version_id", VersionId))
        table.add_column(sa.Column("source_chunk_index", sa.Integer()))
        table.create_index(
            "ix_membership_bitmap_chunk_source", ["source_version_id", "kind", "key"]
        )
    with op.batch_alter_table("membership_version_plan") as table:
        table.add_column(sa.Column("pending_position", sa.BigInteger()))
        table.add_column(sa.Column("delta_identities", sa.LargeBinary()))
    with op.batch_alter_table("membership_version") as table:
        table.add_column(sa.Column("delta_identity_count", sa.BigInteger()))
        table.add_column(sa.Column("shared_byte_size", sa.BigInteger()))
    with op.batch_alter_table("membership_backfill_request") as table:
        table.add_column(
            sa.Column("delta", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "membership_pending_identity",
        sa.Column("environment_key", sa.String(255), primary_key=True),
        sa.Column("identity_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("captured_at", Timestamp, nullable=False),
    )
    op.create_table(
        "membership_capture",
        sa.Column("slot_name", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("confirmed_position", sa.BigInteger()),
        sa.Column("detail", sa.Text()),
        sa.Column("changes_recorded", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("consumer", sa.String(255)),
        sa.Column("consumer_until", Timestamp),
    )


def downgrade() -> None:
    op.drop_table("membership_capture")
    op.drop_table("membership_pending_identity")
    with op.batch_alter_table("membership_backfill_request") as table:
        table.drop_column("delta")
    with op.batch_alter_table("membership_version") as table:
        table.drop_column("shared_byte_size")
        table.drop_column("delta_identity_count")
    with op.batch_alter_table("membership_version_plan") as table:
        table.drop_column("delta_identities")
        table.drop_column("pending_position")
    with op.batch_alter_table("membership_bitmap_chunk") as table:
        table.drop_index("ix_membership_bitmap_chunk_source")
        table.drop_column("source_chunk_index")
        table.drop_column("source_version_id")
        table.alter_column("payload", existing_type=sa.LargeBinary(), nullable=False)
