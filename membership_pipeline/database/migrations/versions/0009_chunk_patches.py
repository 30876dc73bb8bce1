"""Patched links: a delta version's chunk row may link to an earlier chunk's payload and carry a
small patch over it (``patch_removed``: ids of the payload no longer members; ``patch_added``:
members the payload lacks), so a delta writes what changed, not every chunk holding a changed
bit. A patch is always relative to the payload its row names (patches never chain).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("membership_bitmap_chunk") as table:
        table.add_column(sa.Column("patch_removed", sa.LargeBinary()))
        table.add_column(sa.Column("patch_added", sa.LargeBinary()))
    if op.get_bind().dialect.name == "postgresql":  # serialized Roaring: compression buys little
        for column in ("patch_removed", "patch_added"):
            op.execute(
                f"ALTER TABLE membership_bitmap_chunk ALTER COLUMN {column} SET STORAGE EXTERNAL"
            )


def downgrade() -> None:
    with op.batch_alter_table("membership_bitmap_chunk") as table:
        table.drop_column("patch_added")
        table.drop_column("patch_removed")
