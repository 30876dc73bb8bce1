"""The published answers by identity: rows of consecutive identities of an environment, each
identity with one bit per bitmap (universe, then segments by key) of the version the rows
describe. A delta reads its changed identities' previous answers from them instead of every
chunk holding one (at 10M identities, nearly all of them), and updates them when it publishes.

- ``membership_identity_answers``: the rows; a full version writes its own under its id, and
  publishing it makes them live; a delta stages replacements that publishing folds in.
- ``membership_environment``: which version the live rows describe, the id they are stored
  under, their column order and the columns re-evaluated since (stale).
- ``membership_version.answer_keys``: the column order of the answers a full version wrote.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

VersionId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "membership_identity_answers",
        sa.Column("environment_key", sa.String(255), primary_key=True),
        sa.Column("version_id", VersionId, primary_key=True, autoincrement=False),
        sa.Column("first_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("identity_count", sa.Integer(), nullable=False),
        sa.Column("ids", sa.LargeBinary(), nullable=False),
        sa.Column("bits", sa.LargeBinary(), nullable=False),
        sa.Column("replaces_first_id", sa.BigInteger()),
    )
    with op.batch_alter_table("membership_environment") as table:
        table.add_column(sa.Column("answers_version_id", VersionId))
        table.add_column(sa.Column("answers_generation_id", VersionId))
        table.add_column(sa.Column("answers_keys", sa.Text()))
        table.add_column(sa.Column("answers_stale", sa.Text()))
    with op.batch_alter_table("membership_version") as table:
        table.add_column(sa.Column("answer_keys", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("membership_version") as table:
        table.drop_column("answer_keys")
    with op.batch_alter_table("membership_environment") as table:
        for column in ("answers_stale", "answers_keys", "answers_generation_id",
                       "answers_version_id"):  # fmt: skip
            table.drop_column(column)
    op.drop_table("membership_identity_answers")
