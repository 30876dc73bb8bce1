"""Incremental versions: a version's directory row may point at chunks another version wrote
(shared, never copied), and records when its bitmap was evaluated and from which definition;
a version records how it was made and what the source looked like; a queued request may name
the segments it concerns.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)
VersionId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("membership_bitmap") as table:
        table.add_column(sa.Column("chunk_version_id", VersionId))
        table.add_column(sa.Column("evaluated_as_of", Timestamp))
        table.add_column(sa.Column("definition_digest", sa.String(32)))
        table.create_index("ix_membership_bitmap_chunk_version_id", ["chunk_version_id"])
    with op.batch_alter_table("membership_version") as table:
        table.add_column(sa.Column("mode", sa.String(16)))
        table.add_column(sa.Column("base_version_id", VersionId))
        table.add_column(sa.Column("reevaluated_segment_count", sa.Integer()))
        table.add_column(sa.Column("reused_segment_count", sa.Integer()))
        table.add_column(sa.Column("source_identity_count", sa.BigInteger()))
        table.add_column(sa.Column("source_max_identity_id", sa.BigInteger()))
        table.add_column(sa.Column("source_max_trait_id", sa.BigInteger()))
        table.add_column(sa.Column("environment_digest", sa.String(32)))
    with op.batch_alter_table("membership_version_plan") as table:
        table.add_column(sa.Column("reused_segments", sa.Text()))
        table.add_column(sa.Column("dropped_segments", sa.Text()))
        table.add_column(sa.Column("mode_reason", sa.Text()))
    with op.batch_alter_table("membership_backfill_request") as table:
        table.add_column(sa.Column("segments", sa.Text()))
        table.add_column(sa.Column("segment_total", sa.Integer()))
    with op.batch_alter_table("membership_segment_signature") as table:
        table.add_column(sa.Column("segment_digests", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("membership_segment_signature") as table:
        table.drop_column("segment_digests")
    with op.batch_alter_table("membership_backfill_request") as table:
        table.drop_column("segment_total")
        table.drop_column("segments")
    with op.batch_alter_table("membership_version_plan") as table:
        for column in ("mode_reason", "dropped_segments", "reused_segments"):
            table.drop_column(column)
    with op.batch_alter_table("membership_version") as table:
        for column in ("environment_digest", "source_max_trait_id", "source_max_identity_id",
                       "source_identity_count", "reused_segment_count",
                       "reevaluated_segment_count", "base_version_id", "mode"):  # fmt: skip
            table.drop_column(column)
    with op.batch_alter_table("membership_bitmap") as table:
        table.drop_index("ix_membership_bitmap_chunk_version_id")
        table.drop_column("definition_digest")
        table.drop_column("evaluated_as_of")
        table.drop_column("chunk_version_id")
