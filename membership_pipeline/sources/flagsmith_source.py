"""Read one Flagsmith deployment's core database: environments, identities, traits, segments.

The same code reads PostgreSQL (production) and SQLite (the embedded default) through
SQLAlchemy; connections are read-only. On PostgreSQL an environment's identities and traits
arrive as Arrow columns through ADBC's binary COPY, in the snapshot of the SQLAlchemy read
(:mod:`.arrow_reader`); on SQLite pandas reads them in bounded chunks. Only the traits of keys
the environment's segments reference are read. Both paths end in the same column-wise rules
(:mod:`.identity_columns`), and nothing makes a Python object per row.

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
import pyarrow as pa
import sqlalchemy as sa

from membership_pipeline.evaluation import referenced_trait_keys
from membership_pipeline.sources import flagsmith_tables as tables
from membership_pipeline.sources.arrow_reader import (
    TRAIT_SCHEMA,
    ArrowSnapshotReader,
    IdRange,
    identity_schema,
    known_identities,
    split_id_span,
)
from membership_pipeline.sources.identity_columns import IdentityRange, identity_range
from membership_pipeline.sources.segment_tree import (
    MAX_RULE_DEPTH,
    ConditionRow,
    RuleRow,
    SegmentRow,
    build_segment_trees,
)
from membership_pipeline.storage.errors import DatabaseUnreachable
from membership_pipeline.structured_logging import get_logger

log = get_logger("source")

DEFAULT_CHUNK_ROWS = 200_000
IDENTIFIER_BATCH = 5_000  # ids per identifier lookup (bound parameters per statement)
# An id span smaller than this is read on one connection.
_MIN_IDS_PER_READ = 100_000
# An environment whose id span holds at most this many identities per own identity reads its
# traits without a join: a few foreign rows cost the server less than the join.
OWN_SPAN_SHARE = 1.25


class EnvironmentNotFound(LookupError):
    """No live environment has this api key."""


@dataclass(frozen=True, slots=True)
class EnvironmentInfo:
    id: int
    api_key: str
    name: str
    project_id: int
    organisation_id: int
    organisation_name: str
    use_composite_hash_key: bool
    project_name: str = ""  # (plans recorded before it existed have none)

    @property
    def display_name(self) -> str:
        """How people know the environment: "organisation / project / environment"."""
        return " / ".join(n for n in (self.organisation_name, self.project_name, self.name) if n)


@dataclass(frozen=True)
class IdentityPlan:
    """What planning shards needs: the environment and its segments as of one snapshot, how many
    identities it has, its largest id, and the ids at every ``every``-th rank."""

    info: EnvironmentInfo
    segments: list[dict[str, Any]]
    identity_count: int
    max_id: int | None
    boundaries: list[int]
    every: int
    as_of: datetime
    max_trait_id: int | None = None  # the trait table's largest id (every environment's)
    # The environment's traits above ``traits_after`` (None: not asked, or more rows above it
    # than the check reads).
    new_traits: int | None = None


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
    ) -> None:
        """On PostgreSQL: ``parallel_reads`` connections read one environment at once (default:
        one per core, at most 4); an environment whose id span holds at most
        ``own_span_share`` identities per own identity reads its traits without a join;
        ``columnar=False`` reads through pandas as on SQLite (for comparisons)."""
        self.url = url
        self.chunk_rows = chunk_rows
        self.parallel_reads = parallel_reads or min(os.cpu_count() or 1, 4)
        self.own_span_share = own_span_share
        self.columnar = columnar
        self.engine = sa.create_engine(url, future=True)
        sa.event.listen(self.engine, "connect", _read_only)

    def close(self) -> None:
        self.engine.dispose()

    def require_reachable(self) -> FlagsmithSource:
        """Itself once a connection was made; else closed, and ``DatabaseUnreachable``: one line
        naming the URL (password masked) and the driver's reason."""
        try:
            self.engine.connect().close()
        except sa.exc.OperationalError as error:
            self.close()
            raise DatabaseUnreachable("the Flagsmith database", self.url, error) from None
        return self

    def environments(self) -> list[EnvironmentInfo]:
        """Live environments of live projects, with their organisation."""
        query = sa.text(
            """
            SELECT e.id, e.api_key, e.name, e.project_id, p.name AS project_name,
                   p.organisation_id, o.name AS organisation_name, e.use_mv_v2_evaluation
            FROM environments_environment e
            JOIN projects_project p ON p.id = e.project_id
            JOIN organisations_organisation o ON o.id = p.organisation_id
            WHERE e.deleted_at IS NULL AND p.deleted_at IS NULL
            ORDER BY e.id
            """
        )
        with self.engine.connect() as conn:
            return [
                EnvironmentInfo(
                    id=row.id,
                    api_key=row.api_key,
                    name=row.name,
                    project_id=row.project_id,
                    organisation_id=row.organisation_id,
                    organisation_name=row.organisation_name,
                    use_composite_hash_key=bool(row.use_mv_v2_evaluation),
                    project_name=row.project_name,
                )
                for row in conn.execute(query)
            ]

    def environment(self, api_key: str) -> EnvironmentInfo:
        for info in self.environments():
            if info.api_key == api_key:
                return info
        raise EnvironmentNotFound(f"no live environment has the api key {api_key!r}")

    def identity_id(self, environment_id: int, identifier: str) -> int | None:
        """The id of the environment's identity with this identifier (Flagsmith's unique
        (environment, identifier) index: one index probe), or None."""
        query = sa.select(tables.identities.c.id).where(
            tables.identities.c.environment_id == environment_id,
            tables.identities.c.identifier == identifier,
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()

    def identifiers(self, environment_id: int, ids: Sequence[int]) -> dict[int, str]:
        """Identifier by id, for those of ``ids`` that are the environment's identities (primary
        key probes, in batches)."""
        found: dict[int, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), IDENTIFIER_BATCH):
                query = sa.select(tables.identities.c.id, tables.identities.c.identifier).where(
                    tables.identities.c.id.in_(ids[start : start + IDENTIFIER_BATCH]),
                    tables.identities.c.environment_id == environment_id,
                )
                found.update(conn.execute(query).tuples().all())
        return found

    def read_environment(self, api_key: str, *, all_traits: bool = False) -> EnvironmentSnapshot:
        """Identities, traits and segments of one environment, in one read transaction. Only
        the traits of keys its segments reference are read (all of them with ``all_traits``):
        no other trait can change a membership."""
        info = self.environment(api_key)
        as_of = datetime.now(UTC)
        with self._snapshot() as conn:
            segments = self._segments(conn, info)
            trait_keys = None if all_traits else referenced_trait_keys(segments)
            identities = self._read_range(conn, info, None, trait_keys)
        return EnvironmentSnapshot(
            info=info,
            environment={"key": info.api_key, "name": info.name},
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
        """The environment, its segments, its identity count and largest id, and the ids at ranks
        0, ``every``, 2 × ``every``, ... in one snapshot: one ordered scan of the environment's
        ids on the server, whatever its size; only the boundaries travel. With
        ``traits_after``: how many of the environment's traits lie above that trait id (a
        primary-key range scan of at most ``trait_check_rows`` rows)."""
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        info = self.environment(api_key)
        as_of = datetime.now(UTC)
        with self._snapshot() as conn:
            totals = conn.execute(
                sa.text(
                    "SELECT count(*) AS n, min(id) AS min_id, max(id) AS max_id "
                    "FROM environments_identity WHERE environment_id = :environment_id"
                ),
                {"environment_id": info.id},
            ).one()
            if totals.n <= every:  # one shard: no need to rank the ids
                boundaries = [] if totals.min_id is None else [int(totals.min_id)]
            else:
                ranked = conn.execute(
                    sa.text(
                        """
                        SELECT id FROM (
                            SELECT id, row_number() OVER (ORDER BY id) - 1 AS rank
                            FROM environments_identity WHERE environment_id = :environment_id
                        ) ranked
                        WHERE rank % :every = 0 ORDER BY id
                        """
                    ),
                    {"environment_id": info.id, "every": every},
                ).scalars()
                boundaries = [int(b) for b in ranked]
            segments = self._segments(conn, info)
            max_trait_id = conn.execute(sa.text("SELECT max(id) FROM environments_trait")).scalar()
            new_traits = None
            if traits_after is not None:
                new_traits = _traits_above(conn, info.id, traits_after, trait_check_rows)
        return IdentityPlan(
            info=info,
            segments=segments,
            identity_count=int(totals.n),
            max_id=None if totals.max_id is None else int(totals.max_id),
            boundaries=boundaries,
            every=every,
            as_of=as_of,
            max_trait_id=None if max_trait_id is None else int(max_trait_id),
            new_traits=new_traits,
        )

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
            return self._read_range(
                conn, info, (first_id, last_id), trait_keys, parallel_reads, identifiers, known_ids
            )

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # One snapshot for every read: a concurrent write lands in all or none.
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield conn

    def _read_range(
        self,
        conn: sa.Connection,
        info: EnvironmentInfo,
        id_range: IdRange,
        trait_keys: Collection[str] | None,
        parallel_reads: int | None = None,
        identifiers: bool = True,
        known_ids: np.ndarray | None = None,
    ) -> IdentityRange:
        identity_columns = {
            c["name"] for c in sa.inspect(conn).get_columns("environments_identity")
        }
        with_system_traits = "system_traits" in identity_columns
        checksum = None
        if conn.dialect.name == "postgresql" and self.columnar:
            # Columns in bulk through ADBC's binary COPY, in this connection's snapshot.
            snapshot_id = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
            ranges, own_span = self._read_ranges(
                conn,
                info,
                id_range,
                parallel_reads or self.parallel_reads,
                span=None if known_ids is None else _span_of(known_ids),
            )
            identities, traits, checksum = ArrowSnapshotReader(self.url).read_parts(
                snapshot_id,
                info.id,
                ranges,
                with_system_traits,
                trait_keys,
                join=not own_span,
                identifiers=identifiers,
                known_ids=known_ids,
                checksum_range=id_range,
            )
        elif known_ids is not None:
            checksum = self._checksum(conn, info, id_range)
            system = self._system_traits(conn, info, id_range) if with_system_traits else None
            identities = known_identities(known_ids, system)
            traits = self._traits(conn, info, id_range, trait_keys)
        else:
            identities = self._identities(conn, info, with_system_traits, id_range, identifiers)
            traits = self._traits(conn, info, id_range, trait_keys)
        read = identity_range(
            identities,
            traits,
            composite_hash_key=info.use_composite_hash_key,
            trait_keys=trait_keys,
        )
        read.checksum = checksum
        log.info(
            "segment_membership.source.read",
            environment=info.api_key,
            id_range=list(id_range) if id_range else None,
            identities=len(read.identities),
            trait_rows=len(read.traits),
            trait_keys=sorted(trait_keys) if trait_keys is not None else "all",
            path="adbc" if conn.dialect.name == "postgresql" and self.columnar else "pandas",
        )
        if read.unreadable_traits:
            log.warning(
                "segment_membership.source.unreadable_traits",
                environment=info.api_key,
                rows=read.unreadable_traits,
                rule="a trait whose value_type is unknown or whose value column is null is missing",
            )
        return read

    def _read_ranges(
        self,
        conn: sa.Connection,
        info: EnvironmentInfo,
        id_range: IdRange,
        parallel_reads: int,
        span: tuple[int | None, int | None, int] | None = None,
    ) -> tuple[list[tuple[int, int]], bool]:
        """The environment's id span (within ``id_range``) split into ``parallel_reads`` equal
        spans (ids of one environment are spread about evenly; one span when small), and
        whether the span is (almost) the environment's own: then its traits are read without
        a join (see ``ArrowSnapshotReader.read_parts``). ``span``: its (min, max, count) when
        known."""
        if span is None:
            in_range, bounds = _id_range_filter("id", id_range)
            span = conn.execute(
                sa.text(
                    "SELECT min(id), max(id), count(*) FROM environments_identity "
                    f"WHERE environment_id = :environment_id{in_range}"
                ),
                {"environment_id": info.id, **bounds},
            ).one()
        low, high, count = span
        if low is None:
            return [id_range or (0, 0)], False
        ranges = split_id_span(int(low), int(high), parallel_reads, _MIN_IDS_PER_READ)
        if high - low + 1 <= self.own_span_share * count:  # ids are unique: dense enough
            return ranges, True
        in_span = conn.execute(
            sa.text("SELECT count(*) FROM environments_identity WHERE id BETWEEN :low AND :high"),
            {"low": low, "high": high},
        ).scalar_one()
        return ranges, in_span <= self.own_span_share * count

    def _checksum(
        self, conn: sa.Connection, info: EnvironmentInfo, id_range: IdRange
    ) -> tuple[int, int, int]:
        """The range's identity count, largest id (-1: none) and sum of ids."""
        in_range, bounds = _id_range_filter("id", id_range)
        count, largest, total = conn.execute(
            sa.text(
                "SELECT count(*), coalesce(max(id), -1), coalesce(sum(id), 0) "
                f"FROM environments_identity WHERE environment_id = :environment_id{in_range}"
            ),
            {"environment_id": info.id, **bounds},
        ).one()
        return int(count), int(largest), int(total)

    def _system_traits(
        self, conn: sa.Connection, info: EnvironmentInfo, id_range: IdRange
    ) -> pa.Table:
        """``id`` and ``system_traits`` (JSON text) of the range's identities that have any."""
        as_text = "CAST(system_traits AS TEXT)" if conn.dialect.name == "postgresql" else ""
        in_range, bounds = _id_range_filter("id", id_range)
        query = sa.text(
            f"SELECT id, {as_text or 'system_traits'} AS system_traits FROM environments_identity "
            f"WHERE environment_id = :environment_id{in_range} AND system_traits IS NOT NULL"
        )
        schema = pa.schema([("id", pa.int64()), ("system_traits", pa.string())])
        return self._table(conn, query, schema, environment_id=info.id, **bounds)

    def _table(
        self, conn: sa.Connection, query: sa.TextClause, schema: pa.Schema, **params: Any
    ) -> pa.Table:
        """The generic path (SQLite): pandas reads in bounded chunks into Arrow-backed columns."""
        streaming = conn.execution_options(stream_results=True, max_row_buffer=self.chunk_rows)
        chunks = [
            pa.Table.from_pandas(chunk, preserve_index=False).select(schema.names).cast(schema)
            for chunk in pd.read_sql_query(
                query, streaming, params=params, chunksize=self.chunk_rows, dtype_backend="pyarrow"
            )
        ]
        return pa.concat_tables(chunks) if chunks else schema.empty_table()

    def _identities(
        self,
        conn: sa.Connection,
        info: EnvironmentInfo,
        with_system_traits: bool,
        id_range: IdRange,
        identifiers: bool = True,
    ) -> pa.Table:
        # JSON as its text (a driver would make Python objects of it).
        as_text = "CAST(system_traits AS TEXT)" if conn.dialect.name == "postgresql" else ""
        extra = f", {as_text or 'system_traits'} AS system_traits" if with_system_traits else ""
        identifier = "identifier" if identifiers else "'' AS identifier"
        in_range, bounds = _id_range_filter("id", id_range)
        query = sa.text(
            f"SELECT id, {identifier}{extra} FROM environments_identity "
            f"WHERE environment_id = :environment_id{in_range} ORDER BY id"
        )
        schema = identity_schema(with_system_traits)
        return self._table(conn, query, schema, environment_id=info.id, **bounds)

    def _traits(
        self,
        conn: sa.Connection,
        info: EnvironmentInfo,
        id_range: IdRange,
        trait_keys: Collection[str] | None,
    ) -> pa.Table:
        if trait_keys is not None and not trait_keys:
            return TRAIT_SCHEMA.empty_table()
        in_range, bounds = _id_range_filter("t.identity_id", id_range)
        keys = "" if trait_keys is None else " AND t.trait_key IN :trait_keys"
        query = sa.text(
            f"""
            SELECT t.identity_id, t.trait_key, t.value_type, t.string_value, t.integer_value,
                   t.float_value, t.boolean_value
            FROM environments_trait t JOIN environments_identity i ON i.id = t.identity_id
            WHERE i.environment_id = :environment_id{in_range}{keys}
            """
        )
        params: dict[str, Any] = {"environment_id": info.id, **bounds}
        if trait_keys is not None:
            query = query.bindparams(sa.bindparam("trait_keys", expanding=True))
            params["trait_keys"] = sorted(trait_keys)
        return self._table(conn, query, TRAIT_SCHEMA, **params)

    def _segments(self, conn: sa.Connection, info: EnvironmentInfo) -> list[dict[str, Any]]:
        canonical = (
            "SELECT id FROM segments_segment WHERE project_id = :project_id "
            "AND deleted_at IS NULL AND (version_of_id IS NULL OR version_of_id = id)"
        )
        tree = f"""
            WITH RECURSIVE tree(id, segment_id, parent_rule_id, type, depth) AS (
                SELECT id, segment_id, rule_id, type, 0 FROM segments_segmentrule
                WHERE deleted_at IS NULL AND segment_id IN ({canonical})
                UNION ALL
                SELECT r.id, r.segment_id, r.rule_id, r.type, t.depth + 1
                FROM segments_segmentrule r JOIN tree t ON r.rule_id = t.id
                WHERE r.deleted_at IS NULL AND r.segment_id IS NULL AND t.depth < {MAX_RULE_DEPTH}
            )
        """
        params = {"project_id": info.project_id}
        segment_rows = conn.execute(
            sa.text(f"SELECT id, name FROM segments_segment WHERE id IN ({canonical})"), params
        )
        segments = [SegmentRow(row.id, row.name) for row in segment_rows]
        rules = [
            RuleRow(row.id, row.segment_id, row.parent_rule_id, row.type)
            for row in conn.execute(
                sa.text(f"{tree} SELECT id, segment_id, parent_rule_id, type FROM tree"), params
            )
        ]
        conditions = [
            ConditionRow(row.id, row.rule_id, row.operator, row.property, row.value)
            for row in conn.execute(
                sa.text(
                    f"{tree} SELECT c.id, c.rule_id, c.operator, c.property, c.value "
                    "FROM segments_condition c WHERE c.deleted_at IS NULL "
                    "AND c.rule_id IN (SELECT id FROM tree)"
                ),
                params,
            )
        ]
        built = build_segment_trees(segments, rules, conditions)
        if built.unreachable_rules or built.unreachable_conditions:
            log.warning(
                "segment_membership.source.unreachable_segment_rows",
                environment=info.api_key,
                rules=built.unreachable_rules,
                conditions=built.unreachable_conditions,
            )
        return built.segments


def _span_of(ids: np.ndarray) -> tuple[int | None, int | None, int]:
    if not len(ids):
        return None, None, 0
    return int(ids[0]), int(ids[-1]), len(ids)


def _traits_above(
    conn: sa.Connection, environment_id: int, after_id: int, max_rows: int
) -> int | None:
    """The environment's traits with an id above ``after_id``: a primary-key range scan of the
    rows above it (every environment's), each finding its environment by one primary-key lookup
    of its identity; None when more than ``max_rows`` rows lie above it."""
    scanned, own = conn.execute(
        sa.text(
            """
            SELECT count(*) AS scanned,
                   coalesce(sum(CASE WHEN i.environment_id = :environment_id THEN 1 ELSE 0 END), 0)
            FROM (SELECT identity_id FROM environments_trait WHERE id > :after_id
                  ORDER BY id LIMIT :limit) above
            LEFT JOIN environments_identity i ON i.id = above.identity_id
            """
        ),
        {"environment_id": environment_id, "after_id": after_id, "limit": max_rows + 1},
    ).one()
    return None if scanned > max_rows else int(own)


def _id_range_filter(column: str, id_range: IdRange) -> tuple[str, dict[str, int]]:
    """A bound ``AND column BETWEEN`` clause for an identity-id range (none for the whole)."""
    if id_range is None:
        return "", {}
    first, last = id_range
    return f" AND {column} BETWEEN :first_id AND :last_id", {"first_id": first, "last_id": last}


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
