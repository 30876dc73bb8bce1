"""Environment names: the "organisation / project / environment" people know an environment by,
recorded when a backfill plans it, so status, metadata and readers show it beside the api key.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("membership_environment") as table:
        table.add_column(sa.Column("display_name", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("membership_environment") as table:
        table.drop_column("display_name")
