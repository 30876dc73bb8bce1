from __future__ import annotations

import pytest

from membership_pipeline.database.schema import migrate


@pytest.fixture
def store_url(database_url: str) -> str:
    """A migrated store database on each backend (an SQLite file; a PostgreSQL schema)."""
    migrate(database_url)
    return database_url
