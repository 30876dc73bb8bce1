"""Throw-away databases for the benchmarks: an SQLite file, or a PostgreSQL schema made for the
run and dropped after it (server: ``MEMBERSHIP_BENCH_POSTGRES_URL``, default the local one)."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa

from membership_pipeline.demo.dataset import DemoDataset, write_demo_dataset

POSTGRES_URL = os.environ.get(
    "MEMBERSHIP_BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


class ScratchDatabase:
    """A throw-away database for one backend: an SQLite file, or a PostgreSQL schema."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __enter__(self) -> str:
        if self.backend == "sqlite":
            self.tmp = tempfile.TemporaryDirectory(prefix="membership-bench-")
            return f"sqlite:///{Path(self.tmp.name) / 'flagsmith.sqlite'}"
        self.schema = f"mp_bench_{uuid.uuid4().hex[:12]}"
        self.server = sa.create_engine(POSTGRES_URL)
        with self.server.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {self.schema}"))
        url = sa.engine.make_url(POSTGRES_URL).update_query_dict(
            {"options": f"-csearch_path={self.schema}"}
        )
        return url.render_as_string(hide_password=False)

    def __exit__(self, *_: object) -> None:
        if self.backend == "sqlite":
            self.tmp.cleanup()
            return
        with self.server.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {self.schema} CASCADE"))
        self.server.dispose()


def analyze(url: str) -> None:
    """What autovacuum does to a live table, done now: planner statistics, the visibility map
    and hint bits, so that no measured read pays for a table that was just bulk-loaded."""
    engine = sa.create_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("environments_identity", "environments_trait"):
            conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
    engine.dispose()


def progress(message: str) -> None:
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def seed_one_environment(
    url: str, identities: int, segments: int, unreferenced_traits: int = 0
) -> DemoDataset:
    """A demo Flagsmith database holding one environment (one organisation, one project)."""
    return write_demo_dataset(
        url,
        identities=identities,
        organisations=1,
        projects_per_organisation=1,
        environments_per_project=1,
        segments_per_project=segments,
        unreferenced_traits=unreferenced_traits,
    )
