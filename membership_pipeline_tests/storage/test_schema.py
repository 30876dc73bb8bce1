from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from membership_pipeline.storage import MembershipStore, SchemaNotReady, migrate
from membership_pipeline.storage.database import open_database
from membership_pipeline.storage.schema import VERSION_TABLE, head_revision
from membership_pipeline.storage.tables import metadata


def test_migrate_is_explicit_and_repeatable(database_url):
    with pytest.raises(SchemaNotReady, match=r"has no store schema.*membership migrate"):
        MembershipStore(database_url)
    assert migrate(database_url) == (None, head_revision())
    assert migrate(database_url) == (head_revision(), head_revision())
    MembershipStore(database_url).close()


def test_migrations_create_exactly_the_tables_the_code_uses(store_url):
    database = open_database(store_url)
    with database.writer.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    database.dispose()
    unexpected = [
        d for d in differences if not (d[0] == "remove_table" and d[1].name == VERSION_TABLE)
    ]
    assert unexpected == []


def test_a_store_behind_the_code_refuses_to_open(store_url):
    database = open_database(store_url)
    with database.writer.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'older'"))
    database.dispose()
    with pytest.raises(SchemaNotReady, match="at schema revision older"):
        MembershipStore(store_url)


def test_an_unsupported_url_is_named():
    with pytest.raises(ValueError, match="unsupported store URL 'mysql://x/y'"):
        MembershipStore("mysql://x/y")
