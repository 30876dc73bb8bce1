"""The launch log says which launches were deltas: they count against a cap of their own
(``MEMBERSHIP_ORG_DELTA_LAUNCHES_PER_MINUTE``), so a burst of SDK writes neither waits behind
the per-organisation cap of full backfills nor uses it up. Rows from before: not deltas.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("membership_launch") as table:
        table.add_column(sa.Column("delta", sa.Boolean(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("membership_launch") as table:
        table.drop_column("delta")
