"""Creating and upgrading the store's schema: explicit (``membership migrate``, the tests), never
on import. Alembic runs the migrations in ``migrations/versions`` and records the revision in
``membership_schema_version``, apart from Dagster's own ``alembic_version`` should both share a
database."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from membership_pipeline.database.engines import StoreDatabase, open_database
from membership_pipeline.model.errors import DatabaseUnreachable, SchemaNotReady
from membership_pipeline.structured_logging import get_logger

VERSION_TABLE = "membership_schema_version"
_MIGRATIONS = Path(__file__).with_name("migrations")
# Serialises concurrent `migrate` calls on PostgreSQL (any fixed 64-bit number).
_MIGRATION_LOCK = 0x6D656D62_73746F72

log = get_logger("store")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "the store has no migrations"
    return head


def current_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()


def migrate(url_or_database: str | StoreDatabase) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; repeatable. Returns (revision before, after)."""
    database = (
        open_database(url_or_database) if isinstance(url_or_database, str) else url_or_database
    )
    try:
        require_reachable(database)
        with database.writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            before = current_revision(conn)
            config = _config()
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            after = current_revision(conn)
    finally:
        if isinstance(url_or_database, str):
            database.dispose()
    assert after is not None
    log.info("segment_membership.store.migrated", revision_before=before, revision=after)
    return before, after


def require_reachable(database: StoreDatabase) -> None:
    """``DatabaseUnreachable`` (one line: the URL, password masked, and the driver's reason)
    when no connection to the store can be made."""
    try:
        with database.writer.connect():
            pass
    except sa.exc.OperationalError as error:
        raise DatabaseUnreachable("the membership store", database.url, error) from None


def require_current_schema(database: StoreDatabase) -> None:
    with database.reader.connect() as conn:
        revision = current_revision(conn)
    head = head_revision()
    if revision != head:
        state = "has no store schema" if revision is None else f"is at schema revision {revision}"
        raise SchemaNotReady(
            f"the membership store at {sa.engine.make_url(database.url).render_as_string()} "
            f"{state}; this code needs revision {head}. Run `membership migrate` first."
        )
