"""Alembic environment: runs on the connection that ``schema.migrate`` passes in."""

from alembic import context

from membership_pipeline.database.metadata import metadata
from membership_pipeline.database.schema import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
