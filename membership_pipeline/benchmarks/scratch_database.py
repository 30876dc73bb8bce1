"""Throw-away databases for the benchmarks: an SQLite file, or a PostgreSQL schema made for the
run and dropped after it (server: ``MEMBERSHIP_BENCH_POSTGRES_URL``, default the local one)."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa

from membership_pipeline.benchmarks.live_layout import scatter_traits
from membership_pipeline.demo.dataset import DemoDataset, write_demo_dataset
from membership_pipeline.sources.trait_index import COVERING_INDEX, COVERING_INDEX_SQL

BASE_IDENTITIES = 1_000_000  # what grow_environment copies
CLUSTERED, SCATTERED = "clustered", "scattered"  # trait layouts (see grow_environment)
LAYOUTS = (CLUSTERED, SCATTERED)
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


def set_covering_index(url: str, present: bool) -> None:
    """Create the trait table's covering index as the README tells operators to (then vacuum,
    as autovacuum would, so that index-only scans find the pages all-visible), or drop it."""
    engine = sa.create_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if present:
            conn.execute(sa.text(COVERING_INDEX_SQL))
            conn.execute(sa.text("VACUUM ANALYZE environments_trait"))
        else:
            conn.execute(sa.text(f"DROP INDEX IF EXISTS {COVERING_INDEX}"))
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


def grow_environment(
    url: str,
    env_key: str,
    wanted: int,
    current: int,
    layout: str = CLUSTERED,
    base: int = BASE_IDENTITIES,
) -> int:
    """Copy the environment's first ``base`` identities (with their traits) until it holds
    ``wanted`` identities, as whole copies. ``layout``: ``clustered`` appends each copy's
    traits as one block (the rows of one key and id range lie together on disk: the layout
    most favourable to a read by id range); ``scattered`` lays every trait row of the
    environment out as a live deployment leaves them (``live_layout``), also when no copy is
    needed."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown trait layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    copies = max(wanted // base, 1)
    have = max(current // base, 1)
    if copies <= have and layout == CLUSTERED:
        return current
    copies = max(copies, have)
    progress(
        f"{'growing' if copies > have else 'laying out'} the environment: "
        f"{copies * base:,} identities, traits {layout}, in PostgreSQL"
    )
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
        # The original identities are those below the first copy's ids.
        first_copy_id = conn.execute(
            sa.text("SELECT min(id) FROM environments_identity WHERE environment_id = :e"),
            {"e": env_id},
        ).scalar_one()
        span = _copy_span(conn, env_id, first_copy_id, have, base_max)
        trait_span = trait_max + 1
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
            if layout == CLUSTERED:
                conn.execute(
                    sa.text(
                        "INSERT INTO environments_trait (id, identity_id, trait_key, value_type, "
                        "boolean_value, integer_value, string_value, float_value, created_date) "
                        "SELECT t.id + :tshift, t.identity_id + :shift, t.trait_key, "
                        "t.value_type, t.boolean_value, t.integer_value, t.string_value, "
                        "t.float_value, t.created_date FROM environments_trait t "
                        "JOIN environments_identity i ON i.id = t.identity_id "
                        "WHERE i.environment_id = :e AND i.id < :first + :span"
                    ),
                    {"tshift": copy * trait_span, "shift": copy * span, "e": env_id,
                     "first": first_copy_id, "span": span},
                )  # fmt: skip
            progress(f"  copy {copy + 1} of {copies}")
        if layout == SCATTERED:
            conn.execute(sa.text("SET LOCAL work_mem = '512MB'"))  # the layout's one sort
            rows = scatter_traits(conn, env_id, first_copy_id, span, copies)
            progress(f"  {rows:,} trait rows written as a live deployment leaves them")
    engine.dispose()
    analyze(url)
    return copies * base


def _copy_span(
    conn: sa.Connection, environment_id: int, first_id: int, copies: int, largest_id: int
) -> int:
    """How far apart the copies' ids are: the span the first growth chose (``largest_id + 1``
    then), recovered from the second copy's first id when the environment was grown before."""
    if copies <= 1:
        return largest_id + 1
    second = conn.execute(
        sa.text(
            "SELECT min(id) FROM environments_identity WHERE environment_id = :e "
            "AND identifier LIKE '%~1'"
        ),
        {"e": environment_id},
    ).scalar_one()
    return int(second) - first_id
