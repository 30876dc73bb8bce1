"""Dagster's instance storage on PostgreSQL (``deploy/dagster.postgres.yaml``): dagster-postgres's
own storage, with its URL read as every URL of the project is read (``database.urls``).

dagster-postgres hands ``$DAGSTER_PG_URL`` to SQLAlchemy as written, and SQLAlchemy 2.1 reads a
plain ``postgresql://`` URL as psycopg 3, which this project does not install (and which
dagster-postgres cannot use: its ``NOTIFY`` takes a bound parameter psycopg 3 sends to the
server). Through this class ``postgresql://`` means psycopg2, and a URL that cannot work fails
in one line naming it. The webserver, the daemon, run workers and Celery workers all build the
storage from the same instance configuration, so each of them reads the URL this way.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from membership_pipeline.database.urls import database_url


class PostgresInstanceStorage(DagsterPostgresStorage):
    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> PostgresInstanceStorage:
        try:
            url = database_url(pg_url_from_config(config_value))
        except ValueError as error:
            raise dg.DagsterInvariantViolationError(
                f"Dagster's storage (DAGSTER_PG_URL in deploy/dagster.postgres.yaml): {error}"
            ) from None
        return cls(
            inst_data=inst_data,
            postgres_url=url.render_as_string(hide_password=False),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
