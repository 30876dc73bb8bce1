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

BASE_IDENTITIES = 1_000_000  # what grow_environment copies
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


class ScratchServerDatabase:
    """A throw-away PostgreSQL database of its own (Dagster's instance storage needs one),
    dropped with its connections afterwards."""

    def __enter__(self) -> str:
        self.name = f"mp_bench_{uuid.uuid4().hex[:12]}"
        self.server = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with self.server.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {self.name}"))
        url = sa.engine.make_url(POSTGRES_URL).set(database=self.name)
        return url.render_as_string(hide_password=False)

    def __exit__(self, *_: object) -> None:
        with self.server.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {self.name} WITH (FORCE)"))
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


def grow_environment(url: str, env_key: str, wanted: int, current: int) -> int:
    """Copy the environment's first ``BASE_IDENTITIES`` identities (with their traits) until it
    holds ``wanted`` identities, as whole copies."""
    copies = wanted // BASE_IDENTITIES
    have = max(current // BASE_IDENTITIES, 1)
    if copies <= have:
        return current
    progress(f"growing the environment to {copies * BASE_IDENTITIES:,} identities in PostgreSQL")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        env_id, base_max, trait_max = conn.execute(
            sa.text(
                "SELECT e.id, (SELECT max(id) FROM environments_identity), "
                "(SELECT max(id) FROM environments_trait) FROM environments_environment e "
                "WHERE e.api_key = :key"
            ),
            {"key": env_key},
        ).one()
        span, trait_span = base_max + 1, trait_max + 1
        # The original identities are those below the first copy's ids.
        first_copy_id = conn.execute(
            sa.text("SELECT min(id) FROM environments_identity WHERE environment_id = :e"),
            {"e": env_id},
        ).scalar_one()
        for copy in range(have, copies):
            conn.execute(
                sa.text(
                    "INSERT INTO environments_identity (id, identifier, environment_id, "
                    "created_date) SELECT id + :shift, identifier || '~' || :copy, environment_id, "
                    "created_date FROM environments_identity WHERE environment_id = :e "
                    "AND id < :first + :span"
                ),
                {"shift": copy * span, "copy": copy, "e": env_id, "first": first_copy_id,
                 "span": span},
            )  # fmt: skip
            conn.execute(
                sa.text(
                    "INSERT INTO environments_trait (id, identity_id, trait_key, value_type, "
                    "boolean_value, integer_value, string_value, float_value, created_date) "
                    "SELECT t.id + :tshift, t.identity_id + :shift, t.trait_key, t.value_type, "
                    "t.boolean_value, t.integer_value, t.string_value, t.float_value, "
                    "t.created_date FROM environments_trait t JOIN environments_identity i "
                    "ON i.id = t.identity_id WHERE i.environment_id = :e AND i.id < :first + :span"
                ),
                {"tshift": copy * trait_span, "shift": copy * span, "e": env_id,
                 "first": first_copy_id, "span": span},
            )  # fmt: skip
            progress(f"  copy {copy + 1} of {copies}")
    engine.dispose()
    analyze(url)
    return copies * BASE_IDENTITIES
