"""Chunk payloads stored out of line without compression (PostgreSQL).

A payload is a serialized Roaring bitmap, already compact: PostgreSQL's default (``EXTENDED``)
ran pglz over every payload larger than 2 kB for almost nothing, and made writing a 1M × 300
version take seconds. ``EXTERNAL`` keeps the out-of-line (TOAST) storage and skips compression.
SQLite has no such setting.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE membership_bitmap_chunk ALTER COLUMN payload SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE membership_bitmap_chunk ALTER COLUMN payload SET STORAGE EXTENDED")
