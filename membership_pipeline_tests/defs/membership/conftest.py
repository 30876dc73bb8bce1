from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from membership_pipeline.definitions import build_resources
from membership_pipeline.sources.demo_dataset import DemoDataset, write_demo_dataset
from membership_pipeline.storage import MembershipStore, migrate
from membership_pipeline_tests.conftest import POSTGRES_URL

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    """A small Flagsmith database (SQLite) with eight environments; the tests only read it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('flagsmith') / 'flagsmith.sqlite'}"
    return write_demo_dataset(url, identities=1_500, segments_per_project=20)


@pytest.fixture
def env_key(demo_source: DemoDataset) -> str:
    return demo_source.environments[0]["api_key"]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    migrate(url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[MembershipStore]:
    with MembershipStore(store_url) as opened:
        yield opened


@pytest.fixture
def dagster_postgres_url(postgres_server: sa.Engine) -> Iterator[str]:
    """A PostgreSQL database of its own for Dagster's instance storage, dropped afterwards."""
    name = f"mp_dagster_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg2", database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.fixture
def instance(backend: str, request: pytest.FixtureRequest) -> Iterator[dg.DagsterInstance]:
    """A real Dagster instance: SQLite storage, or PostgreSQL (dagster-postgres)."""
    overrides = None
    if backend == "postgresql":
        url = request.getfixturevalue("dagster_postgres_url")
        overrides = {"storage": {"postgres": {"postgres_url": url}}}
    with dg.instance_for_test(overrides=overrides) as opened:
        yield opened


@pytest.fixture
def dagster_home(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment for a Dagster process: a DAGSTER_HOME with the project's dagster.yaml (the
    embedded default) or its PostgreSQL variant (deploy/dagster.postgres.yaml)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    environment = {"DAGSTER_HOME": str(home)}
    if backend == "sqlite":
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    else:
        shutil.copy(ROOT / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
        environment["DAGSTER_PG_URL"] = request.getfixturevalue("dagster_postgres_url")
    return environment


@pytest.fixture
def resources(demo_source: DemoDataset, store_url: str) -> dict[str, object]:
    return build_resources(demo_source.url, store_url)
