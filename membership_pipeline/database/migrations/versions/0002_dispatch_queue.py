"""The dispatcher's durable state: the request queue, dedup locks and the launch log.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "membership_backfill_request",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("dedup_key", sa.String(512), nullable=False),
        sa.Column("organisation", sa.String(255), nullable=False),
        sa.Column("environment_key", sa.String(255), nullable=False),
        sa.Column("window_start", Timestamp, nullable=False),
        sa.Column("window_end", Timestamp, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("force", sa.Boolean(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("coalesced", sa.Text(), nullable=False),
    )
    op.create_index(
        "ix_membership_backfill_request_environment_key",
        "membership_backfill_request",
        ["environment_key"],
    )
    op.create_table(
        "membership_dedup_lock",
        sa.Column("dedup_key", sa.String(512), primary_key=True),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
    )
    op.create_table(
        "membership_launch",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("organisation", sa.String(255), nullable=False),
        sa.Column("environment_key", sa.String(255), nullable=False),
        sa.Column("launched_at", Timestamp, nullable=False),
    )
    op.create_index("ix_membership_launch_launched_at", "membership_launch", ["launched_at"])


def downgrade() -> None:
    op.drop_index("ix_membership_launch_launched_at", "membership_launch")
    op.drop_table("membership_launch")
    op.drop_table("membership_dedup_lock")
    op.drop_index("ix_membership_backfill_request_environment_key", "membership_backfill_request")
    op.drop_table("membership_backfill_request")
