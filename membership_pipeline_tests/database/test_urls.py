"""URLs as an operator writes them: ``postgresql://`` (and libpq's ``postgres://``) open with
psycopg2, the driver the project installs (SQLAlchemy 2.1 alone would pick psycopg 3); a URL
that cannot work is one line naming it (Dagster's own storage: defs/membership/
test_instance_storage.py)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from membership_pipeline.database.engines import open_database
from membership_pipeline.database.schema import migrate
from membership_pipeline.database.urls import database_url
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore


def as_written(url: str, scheme: str = "postgresql") -> str:
    """``url`` as an operator writes it: no driver named."""
    return sa.engine.make_url(url).set(drivername=scheme).render_as_string(hide_password=False)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_plain_postgresql_url_opens_the_store_and_the_source(postgres_url, scheme):
    url = as_written(postgres_url, scheme)
    assert migrate(url)[1] is not None
    with MembershipStore(url) as store:
        assert store.database.writer.dialect.driver == "psycopg2"
        assert store.all_metadata() == []
    with FlagsmithSource(url) as source:
        assert source.engine.dialect.driver == "psycopg2"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql+psycopg://u:secret@h/d", "u:***@h/d: the project reads PostgreSQL through "
         "psycopg2, not psycopg (write postgresql://... or postgresql+psycopg2://...)"),
        ("mysql://u@h/d", "mysql://u@h/d: mysql is not supported (write postgresql://"),
        ("not a url", "'not a url' is not a database URL (write postgresql://"),
    ],
)  # fmt: skip
def test_a_url_that_cannot_work_is_one_line_naming_it(url, said):
    with pytest.raises(ValueError) as refused:
        database_url(url)
    assert said in str(refused.value) and "\n" not in str(refused.value)
    assert "secret" not in str(refused.value)
    with pytest.raises(ValueError, match=r"^the store URL "):
        open_database(url)
