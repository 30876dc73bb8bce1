from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from membership_pipeline.database.schema import migrate
from membership_pipeline.defs.membership.definitions import build_resources
from membership_pipeline.demo.dataset import DemoDataset, write_demo_dataset
from membership_pipeline.storage import MembershipStore
from membership_pipeline_tests.conftest import POSTGRES_URL
from membership_pipeline_tests.process_groups import stop_group

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
    """A PostgreSQL database of its own for Dagster's instance storage, dropped afterwards; its
    URL as an operator writes it (``postgresql://``, no driver named)."""
    name = f"mp_dagster_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(POSTGRES_URL).set(drivername="postgresql", database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.fixture
def instance(backend: str, request: pytest.FixtureRequest) -> Iterator[dg.DagsterInstance]:
    """A real Dagster instance: SQLite storage, or PostgreSQL as deploy/dagster.postgres.yaml
    configures it (dagster-postgres)."""
    overrides = None
    if backend == "postgresql":
        url = request.getfixturevalue("dagster_postgres_url")
        storage = yaml.safe_load((ROOT / "deploy" / "dagster.postgres.yaml").read_text())["storage"]
        storage["custom"]["config"]["postgres_url"] = url
        overrides = {"storage": storage}
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


@pytest.fixture
def webserver(
    tmp_path: Path, demo_source: DemoDataset
) -> Iterator[tuple[int, str, dict[str, str]]]:
    """A real dagster-webserver on a free port over a scratch instance and an embedded store:
    (port, store url, the environment its processes run with)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The default run coordinator launches at once (the queued one needs dagster-daemon).
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster._core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
    )
    store_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(store_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MEMBERSHIP_SOURCE_URL": demo_source.url,
        "MEMBERSHIP_STORE_URL": store_url,
        "MEMBERSHIP_SHARD_IDENTITIES": "100",  # the environment's 375 identities in 4 shards
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
         "-w", "workspace.yaml"],
        cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # its group holds the code server it starts: stopped together
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "webserver did not start"
            time.sleep(0.5)
    yield port, store_url, environment
    stop_group(server, wait=30)  # the webserver shuts down on SIGINT, then the rest
    shutil.rmtree(home, ignore_errors=True)


def add_environment_partition(dagster_home: str, env_key: str) -> None:
    """Adds the environment's partition to the instance in ``dagster_home``."""
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = dagster_home
    try:
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions("environments", [env_key])
    finally:
        if previous is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = previous
