"""Dagster's storage as deploy/dagster.postgres.yaml configures it takes DAGSTER_PG_URL as an
operator writes it (``postgresql://``, through psycopg2); the project's commands that open the
instance say in one line what is missing or wrong."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

from membership_pipeline.defs.dagster_instance import InstanceUnavailable, open_instance
from membership_pipeline_tests.defs.membership.conftest import ROOT


def test_dagster_storage_takes_a_plain_postgresql_url(dagster_postgres_url, tmp_path, monkeypatch):
    """deploy/dagster.postgres.yaml with DAGSTER_PG_URL as an operator writes it: runs are
    stored (through psycopg2); a URL that cannot work, or none, is one line."""
    assert dagster_postgres_url.startswith("postgresql://")
    shutil.copy(ROOT / "deploy" / "dagster.postgres.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_postgres_url)

    @dg.asset
    def one() -> int:
        return 1

    with open_instance() as instance:
        result = dg.materialize([one], instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id).status is dg.DagsterRunStatus.SUCCESS
        assert instance.run_storage._engine.dialect.driver == "psycopg2"
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+asyncpg://dagster@db/dagster")
    with pytest.raises(InstanceUnavailable) as refused:
        open_instance()
    assert str(refused.value) == (
        f"the Dagster instance in {tmp_path}: Dagster's storage (DAGSTER_PG_URL in "
        "deploy/dagster.postgres.yaml): postgresql+asyncpg://dagster@db/dagster: the project "
        "reads PostgreSQL through psycopg2, not asyncpg (write postgresql://... or "
        "postgresql+psycopg2://...)"
    )
    monkeypatch.delenv("DAGSTER_PG_URL")
    with pytest.raises(InstanceUnavailable, match=r"reads \$DAGSTER_PG_URL, which is not set"):
        open_instance()
    monkeypatch.delenv("DAGSTER_HOME")
    with pytest.raises(InstanceUnavailable, match=r"^set DAGSTER_HOME to the folder"):
        open_instance()
