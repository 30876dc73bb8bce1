"""Change detection's durable watermarks: the highest source ids seen, and the signatures of
each project's segment tables.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "membership_source_watermark",
        sa.Column("table_name", sa.String(64), primary_key=True),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("scan_from", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )
    op.create_table(
        "membership_segment_signature",
        sa.Column("project_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("latest_change", Timestamp),
        sa.Column("digest", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("membership_segment_signature")
    op.drop_table("membership_source_watermark")
