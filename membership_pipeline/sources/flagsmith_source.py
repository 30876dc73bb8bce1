"""``FlagsmithSource``: one Flagsmith deployment's core database, read-only — the environments it
holds (:mod:`.catalogue`), a backfill's plan (:mod:`.identity_planner`), an environment's or one
id range's identities and traits in one snapshot, and its segments (:mod:`.segment_reader`).

The same code reads PostgreSQL (production) and SQLite (the embedded default) through
SQLAlchemy. The range reader is chosen once, by the URL (:mod:`.range_readers`): on PostgreSQL
identities and traits arrive as Arrow columns through ADBC's binary COPY, in the snapshot of the
SQLAlchemy read (:mod:`.arrow_reader`); elsewhere pandas reads them in bounded chunks
(:mod:`.sql_range_reader`). Only the traits of keys the environment's segments reference are
read. Both paths end in the same column-wise rules (:mod:`.identity_columns`), and nothing makes
a Python object per row.

    with FlagsmithSource(url).require_reachable() as source:
        snapshot = source.read_environment("env_api_key")

Rules that decide correctness, following Flagsmith's models:

* the partition key of an environment is its ``api_key``; its segments are its project's;
* only canonical, live segments count: ``deleted_at`` is null and ``version_of_id`` is the
  segment itself (or null, for rows from before segment versioning); soft-deleted rules and
  conditions are ignored;
* a trait's value is the column its ``value_type`` names (``unicode``, ``int``, ``float``,
  ``bool``); like Flagsmith's ``Trait.trait_value``, a row whose type is unknown or whose column
  is null has no value, and reads as a missing trait — such rows are counted and reported
  (``segment_membership.source.unreadable_traits``), not guessed;
* ``environments_identity.system_traits`` (optional JSON object) overrides user traits of the
  same key;
* ``use_mv_v2_evaluation`` (``use_identity_composite_key_for_hashing``) chooses the
  percentage-split key: ``"{api_key}_{identifier}"`` when set, else ``str(identity id)``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from membership_pipeline.database.urls import database_url
from membership_pipeline.evaluation import referenced_trait_keys
from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.model.errors import DatabaseUnreachable
from membership_pipeline.sources.arrow_reader import OWN_SPAN_SHARE, ArrowRangeReader
from membership_pipeline.sources.catalogue import EnvironmentCatalogue
from membership_pipeline.sources.identity_columns import IdentityRange, identity_range
from membership_pipeline.sources.identity_planner import (
    EnvironmentState,
    IdentityPlan,
    environment_state,
    plan_identities,
)
from membership_pipeline.sources.range_readers import IdRange, RangeQuery, RangeReader
from membership_pipeline.sources.segment_reader import read_segments
from membership_pipeline.sources.sql_range_reader import DEFAULT_CHUNK_ROWS, SqlRangeReader
from membership_pipeline.sources.trait_index import COVERING_INDEX_SQL, has_covering_index
from membership_pipeline.structured_logging import get_logger

log = get_logger("source")
# A range read of at least this many identities without the covering index says so (once per
# source): below it, the heap pages a read visits cost little whatever the layout.
COVERING_INDEX_ADVICE_IDENTITIES = 500_000

# The embedded default: the demo's Flagsmith database (``membership-demo-dataset`` writes it).
EMBEDDED_SOURCE_URL = "sqlite:///.membership/flagsmith_demo.sqlite"


@dataclass
class EnvironmentSnapshot:
    """What the engine needs for one environment, read at ``as_of``."""

    info: EnvironmentInfo
    environment: dict[str, str]
    identities: pd.DataFrame
    traits: pd.DataFrame
    segments: list[dict[str, Any]]
    as_of: datetime
    unreadable_traits: int = 0
    overridden_by_system_traits: int = 0
    # The trait keys read: those the segments reference (None: every key).
    trait_keys: frozenset[str] | None = None


class FlagsmithSource:
    """Read-only access to a Flagsmith core database by SQLAlchemy URL."""

    def __init__(
        self,
        url: str,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        *,
        parallel_reads: int | None = None,
        own_span_share: float = OWN_SPAN_SHARE,
        columnar: bool = True,
        pre_ping: bool = False,
    ) -> None:
        """On PostgreSQL: ``parallel_reads`` connections read one environment at once (default:
        one per core, at most 4); an environment whose id span holds at most
        ``own_span_share`` identities per own identity reads its traits without a join;
        ``columnar=False`` reads through pandas as on SQLite (for comparisons);
        ``pre_ping``: test each pooled connection before use (a source kept open for long)."""
        self.url = url
        self.parallel_reads = parallel_reads or min(os.cpu_count() or 1, 4)
        self.engine = sa.create_engine(database_url(url), future=True, pool_pre_ping=pre_ping)
        sa.event.listen(self.engine, "connect", _read_only)
        self.catalogue = EnvironmentCatalogue(self.engine)
        self.reader: RangeReader = (
            ArrowRangeReader(url, own_span_share)
            if self.engine.dialect.name == "postgresql" and columnar
            else SqlRangeReader(chunk_rows)
        )
        self._advised = False  # the covering index's advice is logged once

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> FlagsmithSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def require_reachable(self) -> FlagsmithSource:
        """Itself once a connection was made; else closed, and ``DatabaseUnreachable``: one line
        naming the URL (password masked) and the driver's reason."""
        try:
            self.engine.connect().close()
        except sa.exc.OperationalError as error:
            self.close()
            raise DatabaseUnreachable("the Flagsmith database", self.url, error) from None
        return self

    # The catalogue's questions, asked of the source as a whole.
    def environments(self) -> list[EnvironmentInfo]:
        return self.catalogue.environments()

    def environment(self, api_key: str) -> EnvironmentInfo:
        return self.catalogue.environment(api_key)

    def identity_ids(self, environment_id: int, identifiers: Sequence[str]) -> dict[str, int]:
        return self.catalogue.identity_ids(environment_id, identifiers)

    def identifiers(self, environment_id: int, ids: Sequence[int]) -> dict[int, str]:
        return self.catalogue.identifiers(environment_id, ids)

    def read_environment(self, api_key: str, *, all_traits: bool = False) -> EnvironmentSnapshot:
        """Identities, traits and segments of one environment, in one read transaction. Only
        the traits of keys its segments reference are read (all of them with ``all_traits``):
        no other trait can change a membership."""
        info = self.environment(api_key)
        as_of = datetime.now(UTC)
        with self._snapshot() as conn:
            segments = read_segments(conn, info)
            trait_keys = None if all_traits else referenced_trait_keys(segments)
            identities = self._read(conn, info, None, trait_keys)
        return EnvironmentSnapshot(
            info=info,
            environment=info.context,
            identities=identities.identities,
            traits=identities.traits,
            segments=segments,
            as_of=as_of,
            unreadable_traits=identities.unreadable_traits,
            overridden_by_system_traits=identities.overridden_by_system_traits,
            trait_keys=trait_keys,
        )

    def plan_identities(
        self,
        api_key: str,
        every: int,
        *,
        traits_after: int | None = None,
        trait_check_rows: int = 1_000_000,
    ) -> IdentityPlan:
        """The environment, its segments, its identity count and largest id, and the ids at
        ranks 0, ``every``, 2 × ``every``, ... in one snapshot (see ``identity_planner``)."""
        info = self.environment(api_key)
        as_of = datetime.now(UTC)
        with self._snapshot() as conn:
            return plan_identities(
                conn,
                info,
                every,
                as_of,
                traits_after=traits_after,
                trait_check_rows=trait_check_rows,
            )

    def environment_state(self, api_key: str) -> EnvironmentState:
        """The environment, its segments and the trait table's largest id, in one snapshot
        (what a delta backfill plans from)."""
        info = self.environment(api_key)
        as_of = datetime.now(UTC)
        with self._snapshot() as conn:
            return environment_state(conn, info, as_of)

    def read_identity_range(
        self,
        info: EnvironmentInfo,
        first_id: int,
        last_id: int,
        trait_keys: Collection[str] | None = None,
        *,
        parallel_reads: int | None = None,
        identifiers: bool = True,
        known_ids: np.ndarray | None = None,
    ) -> IdentityRange:
        """One shard's identities (``first_id <= id <= last_id``) and their traits (only of
        ``trait_keys``, when given), in one snapshot; on ``parallel_reads`` connections
        (default: the source's). ``identifiers=False`` reads every identifier as the empty
        string: for segments that never read one (see ``reads_identifiers``).

        ``known_ids`` (sorted; with ``identifiers=False``): the range's ids as a published
        version holds them. The identity rows are then not sent: only the system traits of
        those that have any, and the range's count, largest and sum of ids
        (``IdentityRange.checksum``), which the caller compares with ``known_ids``."""
        if known_ids is not None and identifiers:
            raise ValueError("known_ids stand in for identity rows only without identifiers")
        with self._snapshot() as conn:
            return self._read(
                conn, info, (first_id, last_id), trait_keys, parallel_reads, identifiers, known_ids
            )

    def read_identities(
        self,
        info: EnvironmentInfo,
        ids: np.ndarray,
        trait_keys: Collection[str] | None = None,
        *,
        identifiers: bool = True,
    ) -> IdentityRange:
        """The listed identities that exist in the environment (a delta backfill's changed
        ones) and their traits, in one snapshot: primary-key and ``identity_id`` index lookups,
        whatever the environment's size."""
        with self._snapshot() as conn:
            return self._read(
                conn, info, None, trait_keys, 1, identifiers, None, ids=ids, reader=SqlRangeReader()
            )

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # One snapshot for every read: a concurrent write lands in all or none.
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield conn

    def _read(
        self,
        conn: sa.Connection,
        info: EnvironmentInfo,
        id_range: IdRange,
        trait_keys: Collection[str] | None,
        parallel_reads: int | None = None,
        identifiers: bool = True,
        known_ids: np.ndarray | None = None,
        *,
        ids: np.ndarray | None = None,
        reader: RangeReader | None = None,
    ) -> IdentityRange:
        # Only a range read walks the trait table's index by key; a list of ids probes it.
        covering = ids is None and has_covering_index(conn)
        raw = (reader or self.reader).read(
            conn,
            RangeQuery(
                info=info,
                id_range=id_range,
                trait_keys=trait_keys,
                system_traits=_has_column(conn, "environments_identity", "system_traits"),
                parallel_reads=parallel_reads or self.parallel_reads,
                identifiers=identifiers,
                known_ids=known_ids,
                ids=ids,
                covering_index=covering,
            ),
        )
        read = identity_range(
            raw.identities,
            raw.traits,
            composite_hash_key=info.use_composite_hash_key,
            trait_keys=trait_keys,
        )
        read.checksum = raw.checksum
        log.info(
            "segment_membership.source.read",
            environment=info.api_key,
            id_range=list(id_range) if id_range else None,
            identities=len(read.identities),
            trait_rows=len(read.traits),
            trait_keys=sorted(trait_keys) if trait_keys is not None else "all",
            path=self.reader.path,
            trait_index="covering" if covering else "none",
        )
        if (
            ids is None
            and not covering
            and not self._advised
            and conn.dialect.name == "postgresql"
            and len(read.identities) >= COVERING_INDEX_ADVICE_IDENTITIES
        ):
            self._advised = True
            log.warning(
                "segment_membership.source.no_covering_index",
                environment=info.api_key,
                identities=len(read.identities),
                advice="reads of large environments visit most of the trait table's heap; "
                "create the covering index (README: Big environments)",
                statement=COVERING_INDEX_SQL,
            )
        if read.unreadable_traits:
            log.warning(
                "segment_membership.source.unreadable_traits",
                environment=info.api_key,
                rows=read.unreadable_traits,
                rule="a trait whose value_type is unknown or whose value column is null is missing",
            )
        return read


def _read_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    module = type(dbapi_connection).__module__
    if module.startswith("sqlite3"):
        cursor.execute("PRAGMA query_only = ON")
    else:
        cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        # SET is transactional in PostgreSQL: commit it, or the pool's reset rolls it back.
        dbapi_connection.commit()
    cursor.close()


def _has_column(conn: sa.Connection, table: str, column: str) -> bool:
    """Whether the source's ``table`` (as the connection's search path finds it) has
    ``column``, asked on every read (a Flagsmith migration may add it): on PostgreSQL one
    catalogue lookup, not SQLAlchemy's reflection of every column (about 10 ms)."""
    if conn.dialect.name == "postgresql":
        found = conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(:table) "
                "AND attname = :column AND attnum > 0 AND NOT attisdropped)"
            ),
            {"table": table, "column": column},
        ).scalar_one()
        return bool(found)
    return column in {c["name"] for c in sa.inspect(conn).get_columns(table)}
