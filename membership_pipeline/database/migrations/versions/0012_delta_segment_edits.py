"""A delta plan may carry segment edits: its new and edited segments are evaluated on every
identity and written whole, in the same version as its changed identities (one backfill does
both). Plans from before: none.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("membership_version_plan") as table:
        table.add_column(sa.Column("rebuilt_segments", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("membership_version_plan") as table:
        table.drop_column("rebuilt_segments")
