"""What a new replication slot's first tick needs to refresh only what the slot cannot cover:

- ``membership_version.source_xmin``: every source transaction with a lower id had ended before
  any part of the version was read (a full version: its plan's snapshot; an incremental or delta
  version: its base's). Versions from before: unknown (null), so refreshed as before.
- ``membership_capture.slot_horizon``: the source's next transaction id just after the slot was
  made (every transaction that committed before the slot's consistent point has a lower id).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("membership_version") as table:
        table.add_column(sa.Column("source_xmin", sa.BigInteger()))
    with op.batch_alter_table("membership_capture") as table:
        table.add_column(sa.Column("slot_horizon", sa.BigInteger()))


def downgrade() -> None:
    with op.batch_alter_table("membership_capture") as table:
        table.drop_column("slot_horizon")
    with op.batch_alter_table("membership_version") as table:
        table.drop_column("source_xmin")
