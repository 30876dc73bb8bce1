"""The read API under test: ``membership serve`` in a subprocess on a free port, over a store
(an SQLite file, or a PostgreSQL schema) holding real backfills of a small demo Flagsmith
database."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from membership_pipeline.database.schema import migrate
from membership_pipeline.demo.dataset import DemoDataset, write_demo_dataset
from membership_pipeline.serving.api_keys import Scope, add_key
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore
from membership_pipeline_tests.backfill.conftest import plain_backfill
from membership_pipeline_tests.process_groups import stop_group

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def flagsmith(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    """Eight environments in two organisations (two projects each), the largest 800 identities."""
    url = f"sqlite:///{tmp_path_factory.mktemp('serving') / 'flagsmith.sqlite'}"
    return write_demo_dataset(url, identities=800, segments_per_project=8)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    migrate(url)
    return url


@pytest.fixture
def store(store_url: str, flagsmith: DemoDataset) -> Iterator[MembershipStore]:
    """Every environment backfilled once, the plain way."""
    source = FlagsmithSource(flagsmith.url)
    with MembershipStore(store_url) as opened:
        for environment in flagsmith.environments:
            plain_backfill(source, opened, environment["api_key"])
        yield opened
    source.close()


@dataclass
class Service:
    url: str
    keys: dict[str, str]  # name → the key
    log: Path  # the service's stderr: its structlog events
    client: httpx.Client  # one, kept alive (a client per request costs ~0.1 s to set up)

    def get(self, path: str, key: str | None = "all", **params: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return self.client.get(f"{self.url}{path}", params=params, headers=headers)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def placements(source_url: str) -> dict[str, tuple[str, str]]:
    """Each environment's (organisation id, project id), straight from Flagsmith's tables."""
    engine = sa.create_engine(source_url)
    query = (
        "SELECT e.api_key, p.organisation_id, p.id FROM environments_environment e"
        " JOIN projects_project p ON p.id = e.project_id"
    )
    with engine.connect() as conn:
        found = {key: (str(org), str(project)) for key, org, project in conn.exec_driver_sql(query)}
    engine.dispose()
    return found


@pytest.fixture
def service(
    store: MembershipStore, store_url: str, flagsmith: DemoDataset, tmp_path: Path
) -> Iterator[Service]:
    with running_service(store_url, flagsmith, tmp_path) as started:
        yield started


@contextlib.contextmanager
def running_service(
    store_url: str, flagsmith: DemoDataset, tmp_path: Path, *options: str
) -> Iterator[Service]:
    """``membership serve`` in its own process group, with keys of every scope kind."""
    keys_file = tmp_path / f"api_keys_{uuid.uuid4().hex[:6]}.json"
    placed = placements(flagsmith.url)
    first = flagsmith.environments[0]["api_key"]
    organisation, project = placed[first]
    every_organisation = sorted({org for org, _ in placed.values()})
    keys = {
        "all": add_key(keys_file, "all", [Scope("organisation", o) for o in every_organisation]),
        "organisation": add_key(keys_file, "organisation", [Scope("organisation", organisation)]),
        "project": add_key(keys_file, "project", [Scope("project", project)]),
        "environment": add_key(keys_file, "environment", [Scope("environment", first)]),
        "unknown": "mpk_not-a-key-of-this-service",
    }
    port = free_port()
    log = keys_file.with_suffix(".log")
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "membership_pipeline.cli", "--store-url", store_url,
             "--source-url", flagsmith.url, "serve", "--port", str(port),
             "--api-keys", str(keys_file), "--pointer-ttl", "0", *options],
            cwd=ROOT, env=os.environ, stdout=sink, stderr=sink, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.2)
    try:
        with httpx.Client(timeout=30) as client:
            yield Service(url, keys, log, client)
    finally:
        stop_group(process)
