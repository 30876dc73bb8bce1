from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from membership_pipeline.changes import tables as change_tables
from membership_pipeline.database.engines import open_database
from membership_pipeline.database.metadata import metadata
from membership_pipeline.database.schema import VERSION_TABLE, head_revision, migrate
from membership_pipeline.dispatch import tables as dispatch_tables
from membership_pipeline.model.errors import SchemaNotReady
from membership_pipeline.storage import MembershipStore
from membership_pipeline.storage import tables as store_tables


def test_migrate_is_explicit_and_repeatable(database_url):
    with pytest.raises(SchemaNotReady, match=r"has no store schema.*membership migrate"):
        MembershipStore(database_url)
    assert migrate(database_url) == (None, head_revision())
    assert migrate(database_url) == (head_revision(), head_revision())
    MembershipStore(database_url).close()


def test_every_context_declares_its_tables_on_the_one_metadata():
    """Each bounded context owns its tables; the one MetaData (which the chain must create
    exactly) holds them all."""
    owners = {
        "storage": store_tables,
        "dispatch": dispatch_tables,
        "changes": change_tables,
    }
    declared = {
        name: {t.name for t in vars(module).values() if isinstance(t, sa.Table)}
        for name, module in owners.items()
    }
    assert declared["dispatch"] == {
        "membership_backfill_request", "membership_dedup_lock", "membership_launch"
    }  # fmt: skip
    assert declared["changes"] == {
        "membership_source_watermark", "membership_segment_signature", "membership_capture"
    }  # fmt: skip
    everything = set().union(*declared.values())
    assert sum(map(len, declared.values())) == len(everything)  # each table has one owner
    assert set(metadata.tables) == everything


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
    with pytest.raises(ValueError, match=r"^the store URL mysql://x/y: mysql is not supported"):
        MembershipStore("mysql://x/y")
