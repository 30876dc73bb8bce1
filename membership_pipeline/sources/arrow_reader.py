"""The PostgreSQL range reader: identities and traits as Arrow columns, through ADBC.

ADBC's PostgreSQL driver runs a query as ``COPY (...) TO STDOUT (FORMAT binary)`` and decodes the
stream into Arrow arrays in C: no Python object per row or per value (pandas ``read_sql`` made
one per value, about 240k rows/s here). The reads join the caller's snapshot
(``pg_export_snapshot``), so they see exactly what its other reads see.
"""

from __future__ import annotations

import contextlib
import functools
import queue
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from membership_pipeline.evaluation.environment_data import VALUE_COLUMN_BY_TYPE
from membership_pipeline.sources.range_readers import (
    TRAIT_SCHEMA,
    IdRange,
    RangeQuery,
    RawRange,
    identity_schema,
    known_identities,
)

# The identity / trait hash join of a large environment fits in memory instead of spilling.
_WORK_MEM = "256MB"
# An id span smaller than this is read on one connection.
_MIN_IDS_PER_READ = 100_000
# An environment whose id span holds at most this many identities per own identity reads its
# traits without a join: a few foreign rows cost the server less than the join.
OWN_SPAN_SHARE = 1.25


def libpq_uri(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as the libpq URI ADBC takes (query options kept)."""
    parsed = sa.engine.make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class ArrowSnapshotReader:
    """Column reads of one environment in a snapshot exported by another connection."""

    def __init__(self, url: str) -> None:
        self.uri = libpq_uri(url)

    def read_parts(
        self,
        snapshot_id: str,
        environment_id: int,
        id_ranges: list[tuple[int, int]],
        system_traits: bool,
        trait_keys: Collection[str] | None,
        join: bool = True,
        identifiers: bool = True,
        known_ids: np.ndarray | None = None,
        checksum_range: IdRange = None,
        per_key: bool = False,
    ) -> tuple[pa.Table, pa.Table, tuple[int, int, int] | None]:
        """Identities and traits of consecutive id ranges, read by one connection and thread
        per range (the server scans and sends, the driver decodes, without the GIL), taking
        queries from one queue: one environment's read uses every core, on both sides of the
        socket. Identities come ordered by id.

        ``join=False`` reads the trait rows of the id ranges without joining the identity
        table and keeps those of the environment's identities here: far cheaper for the server
        when the ranges hold (almost) only this environment's identities. ``per_key`` (with a
        covering index of the trait table, see ``trait_index``): one query per trait key, an
        index-only scan that sends no key column; else one query per range for all its keys,
        so that each heap page is visited once per range, not once per key (the rows of one
        identity lie anywhere in a live deployment's heap).

        ``known_ids``: the identities' ids, already known. Instead of the identity rows, the
        queue then reads the count, largest and sum of ids in ``checksum_range`` (returned
        third, for the caller to compare) and the system traits of the identities that have
        any, beside the traits."""
        queries: list[Callable[[SnapshotReads], Any]] = []
        if known_ids is None:
            queries += [
                functools.partial(
                    SnapshotReads.identities,
                    environment_id=environment_id,
                    id_range=id_range,
                    system_traits=system_traits,
                    identifiers=identifiers,
                )
                for id_range in id_ranges
            ]
        else:
            queries.append(
                functools.partial(
                    SnapshotReads.checksum, environment_id=environment_id, id_range=checksum_range
                )
            )
            if system_traits:
                queries.append(
                    functools.partial(
                        SnapshotReads.system_traits,
                        environment_id=environment_id,
                        id_range=checksum_range,
                    )
                )
        first_trait_query = len(queries)
        if trait_keys is not None and not trait_keys:
            pass  # no trait can change a membership: none is read
        elif not join and trait_keys and per_key:
            queries += [
                functools.partial(SnapshotReads.key_traits, key=key, id_range=id_range)
                for key in sorted(trait_keys)
                for id_range in id_ranges
            ]
        else:
            queries += [
                functools.partial(
                    SnapshotReads.traits,
                    environment_id=environment_id,
                    id_range=id_range,
                    trait_keys=trait_keys,
                    join=join,
                )
                for id_range in id_ranges
            ]
        results = self._run(snapshot_id, queries, connections=min(len(id_ranges), len(queries)))
        checksum = None
        if known_ids is None:
            identities = pa.concat_tables(results[:first_trait_query])
        else:
            checksum = results[0]
            identities = known_identities(known_ids, results[1] if system_traits else None)
        trait_tables = results[first_trait_query:]
        traits = pa.concat_tables(trait_tables) if trait_tables else TRAIT_SCHEMA.empty_table()
        if not join:
            owned = _owned_by(identities["id"], traits["identity_id"])
            if not pc.all(owned).as_py():  # a filter copies every column
                traits = traits.filter(owned)
        return identities, traits, checksum

    def _run(
        self,
        snapshot_id: str,
        queries: list[Callable[[SnapshotReads], Any]],
        connections: int,
    ) -> list[Any]:
        """Every query's result, in order; ``connections`` threads take queries from a queue."""
        pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(queries)):
            pending.put(index)
        results: list[Any] = [None] * len(queries)

        def work() -> None:
            with self.joined(snapshot_id) as reads:
                while True:
                    try:
                        index = pending.get_nowait()
                    except queue.Empty:
                        return
                    results[index] = queries[index](reads)

        if connections <= 1:
            work()
        else:
            with ThreadPoolExecutor(connections, thread_name_prefix="read") as pool:
                for done in [pool.submit(work) for _ in range(connections)]:
                    done.result()
        missing = [index for index, table in enumerate(results) if table is None]
        if missing:  # a worker stopped early: never return tables out of their places
            raise RuntimeError(f"read queries {missing} did not run")
        return results  # type: ignore[return-value]

    @contextlib.contextmanager
    def joined(self, snapshot_id: str) -> Iterator[SnapshotReads]:
        # The driver loads with the first read, not with every import of the source.
        import adbc_driver_postgresql.dbapi as adbc

        with contextlib.closing(adbc.connect(self.uri, autocommit=True)) as conn:
            cursor = conn.cursor()
            try:
                cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cursor.execute(f"SET TRANSACTION SNAPSHOT {_quoted(snapshot_id)}")
                cursor.execute(f"SET LOCAL work_mem = {_quoted(_WORK_MEM)}")
                # Compiling these plain scans and joins costs more than it saves.
                cursor.execute("SET LOCAL jit = off")
                # Floats print in their shortest exact form (PostgreSQL 12+), whatever the
                # server's default: the compact trait values parse back to the same doubles.
                cursor.execute("SET LOCAL extra_float_digits = 1")
                yield SnapshotReads(cursor)
            finally:
                with contextlib.suppress(adbc.Error):
                    cursor.execute("COMMIT")
                cursor.close()


class ArrowRangeReader:
    """The environment's id span (within the query's range) split into ``parallel_reads`` spans,
    each read on its own connection in the caller's exported snapshot."""

    path = "adbc"

    def __init__(self, url: str, own_span_share: float = OWN_SPAN_SHARE) -> None:
        self.snapshot_reader = ArrowSnapshotReader(url)
        self.own_span_share = own_span_share

    def read(self, conn: sa.Connection, query: RangeQuery) -> RawRange:
        snapshot_id = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        known = query.known_ids
        ranges, own_span = self._ranges(
            conn, query, span=None if known is None else _span_of(known)
        )
        identities, traits, checksum = self.snapshot_reader.read_parts(
            snapshot_id,
            query.info.id,
            ranges,
            query.system_traits,
            query.trait_keys,
            join=not own_span,
            identifiers=query.identifiers,
            known_ids=known,
            checksum_range=query.id_range,
            per_key=query.covering_index,
        )
        return RawRange(identities, traits, checksum)

    def _ranges(
        self,
        conn: sa.Connection,
        query: RangeQuery,
        span: tuple[int | None, int | None, int] | None = None,
    ) -> tuple[list[tuple[int, int]], bool]:
        """The environment's id span (within the query's range) split into ``parallel_reads``
        equal spans (ids of one environment are spread about evenly; one span when small), and
        whether the span is (almost) the environment's own: then its traits are read without
        a join (see ``ArrowSnapshotReader.read_parts``). ``span``: its (min, max, count) when
        known."""
        id_range = query.id_range
        if span is None:
            span = conn.execute(
                sa.text(
                    "SELECT min(id), max(id), count(*) FROM environments_identity "
                    f"WHERE environment_id = :environment_id{_between('id', id_range)}"
                ),
                {"environment_id": query.info.id},
            ).one()
        low, high, count = span
        if low is None:
            return [id_range or (0, 0)], False
        ranges = split_id_span(int(low), int(high), query.parallel_reads, _MIN_IDS_PER_READ)
        if high - low + 1 <= self.own_span_share * count:  # ids are unique: dense enough
            return ranges, True
        in_span = conn.execute(
            sa.text("SELECT count(*) FROM environments_identity WHERE id BETWEEN :low AND :high"),
            {"low": low, "high": high},
        ).scalar_one()
        return ranges, in_span <= self.own_span_share * count


def _span_of(ids: np.ndarray) -> tuple[int | None, int | None, int]:
    if not len(ids):
        return None, None, 0
    return int(ids[0]), int(ids[-1]), len(ids)


class SnapshotReads:
    def __init__(self, cursor: Any) -> None:  # an ADBC DB-API cursor
        self.cursor = cursor

    def identities(
        self, environment_id: int, id_range: IdRange, system_traits: bool, identifiers: bool = True
    ) -> pa.Table:
        """``id``, ``identifier`` (and ``system_traits`` as JSON text), ordered by id; without
        ``identifiers``, each is the empty string (no segment reads them)."""
        extra = ", system_traits::text AS system_traits" if system_traits else ""
        identifier = "identifier" if identifiers else "''::text AS identifier"
        # No ORDER BY: the server would sort every row, although a table whose rows were
        # inserted in id order (Flagsmith's, almost always) returns them in id order already;
        # they are sorted here only when they are not.
        table = self._table(
            f"SELECT id::int8 AS id, {identifier}{extra} FROM environments_identity "
            f"WHERE environment_id = {int(environment_id)}{_between('id', id_range)}"
        )
        return _ordered_by_id(table.cast(identity_schema(system_traits)))

    def checksum(self, environment_id: int, id_range: IdRange) -> tuple[int, int, int]:
        """The count, largest (-1: none) and sum of the ids of the environment's identities."""
        self.cursor.execute(
            "SELECT count(*)::int8, coalesce(max(id), -1)::int8, coalesce(sum(id), 0)::int8 "
            f"FROM environments_identity WHERE environment_id = {int(environment_id)}"
            f"{_between('id', id_range)}"
        )
        count, largest, total = self.cursor.fetchone()
        return int(count), int(largest), int(total)

    def system_traits(self, environment_id: int, id_range: IdRange) -> pa.Table:
        """``id`` and ``system_traits`` (JSON text) of the identities that have any."""
        return self._table(
            "SELECT id::int8 AS id, system_traits::text AS system_traits "
            f"FROM environments_identity WHERE environment_id = {int(environment_id)}"
            f"{_between('id', id_range)} AND system_traits IS NOT NULL"
        )

    def traits(
        self,
        environment_id: int,
        id_range: IdRange,
        trait_keys: Collection[str] | None,
        join: bool = True,
    ) -> pa.Table:
        """Flagsmith's trait rows of the environment (only ``trait_keys``, when given); with
        ``join=False`` (a bounded ``id_range`` only) those of every identity in the range."""
        if trait_keys is not None and not trait_keys:
            return TRAIT_SCHEMA.empty_table()
        keys = "" if trait_keys is None else f" AND {_trait_key_in(trait_keys)}"
        if join or id_range is None:
            source = (
                "environments_trait t JOIN environments_identity i ON i.id = t.identity_id "
                f"WHERE i.environment_id = {int(environment_id)}{_between('i.id', id_range)}"
            )
        else:
            source = "environments_trait t WHERE true"
        table = self._table(
            f"SELECT t.identity_id::int8 AS identity_id, t.trait_key, {_COMPACT_VALUE} "
            f"FROM {source}{_between('t.identity_id', id_range)}{keys}"
        )
        return _typed_traits(table)

    def key_traits(self, key: str, id_range: tuple[int, int]) -> pa.Table:
        """The trait rows of one key in an id range, of any environment's identities."""
        table = self._table(
            f"SELECT t.identity_id::int8 AS identity_id, {_COMPACT_VALUE} "
            f"FROM environments_trait t WHERE t.trait_key = {_quoted(key)}"
            f"{_between('t.identity_id', id_range)}"
        )
        keys = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(len(table), dtype=np.int32)), pa.array([key], pa.string())
        )
        return _typed_traits(table.add_column(1, "trait_key", keys))

    def _table(self, query: str) -> pa.Table:
        self.cursor.execute(query)
        return self.cursor.fetch_arrow_table()


# A trait row travels as its identity, a type code and its value as text: the driver decodes
# three columns instead of a type name and four value columns, three of them null (measured:
# 2.3 times less client CPU per row). A type the code does not know, or a typed column that is
# null, travels as a null value: Flagsmith reads such a row as no value, as before. PostgreSQL
# prints integers and booleans canonically and floats in their shortest exact form, which Arrow
# parses back to the same double.
_VALUE_TYPES = list(VALUE_COLUMN_BY_TYPE)
_COMPACT_VALUE = (
    "(CASE t.value_type "
    + " ".join(f"WHEN '{name}' THEN {code}" for code, name in enumerate(_VALUE_TYPES))
    + " END)::int4 AS type_code, CASE t.value_type "
    + " ".join(
        f"WHEN '{name}' THEN t.{column}{'' if column == 'string_value' else '::text'}"
        for name, column in VALUE_COLUMN_BY_TYPE.items()
    )
    + " END AS value"
)
_ARROW_TYPES = {
    "string_value": pa.string(),
    "integer_value": pa.int64(),
    "float_value": pa.float64(),
    "boolean_value": pa.bool_(),
}


def _typed_traits(compact: pa.Table) -> pa.Table:
    """``identity_id``, ``trait_key``, ``type_code``, ``value`` → :data:`TRAIT_SCHEMA`."""
    codes = compact["type_code"].combine_chunks()
    value = compact["value"].combine_chunks()
    rows = len(compact)
    columns = {
        "identity_id": compact["identity_id"],
        "trait_key": compact["trait_key"],
        "value_type": pa.DictionaryArray.from_arrays(codes, pa.array(_VALUE_TYPES)),
    }
    for code, (_, column) in enumerate(VALUE_COLUMN_BY_TYPE.items()):
        wanted = _ARROW_TYPES[column]
        of_type = pc.fill_null(pc.equal(codes, code), False)
        typed = int(pc.sum(of_type).as_py() or 0)
        if not typed:
            columns[column] = pa.nulls(rows, wanted)
            continue
        text = value if typed == rows else pc.if_else(of_type, value, pa.scalar(None, pa.string()))
        columns[column] = text if wanted == pa.string() else pc.cast(text, wanted)
    return pa.table(columns).cast(TRAIT_SCHEMA)


def _ordered_by_id(table: pa.Table) -> pa.Table:
    ids = table["id"].to_numpy()
    if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return table
    return table.take(pa.array(np.argsort(ids, kind="stable")))


def _owned_by(ids: pa.ChunkedArray, owners: pa.ChunkedArray) -> pa.Array:
    """Per trait row: is its identity one of ``ids`` (sorted)?"""
    known = ids.to_numpy()
    wanted = owners.to_numpy()
    if not len(known):
        return pa.array(np.zeros(len(wanted), dtype=bool))
    at = np.minimum(np.searchsorted(known, wanted), len(known) - 1)
    return pa.array(known[at] == wanted)


def split_id_span(low: int, high: int, parts: int, min_ids: int) -> list[tuple[int, int]]:
    """``low..high`` as up to ``parts`` consecutive ranges of about equal width, each at least
    ``min_ids`` wide (one range for a narrow span)."""
    parts = max(1, min(parts, (high - low + 1) // max(min_ids, 1)))
    edges = [low + (high - low + 1) * i // parts for i in range(parts + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(parts)]


def _between(column: str, id_range: IdRange) -> str:
    if id_range is None:
        return ""
    first, last = id_range
    return f" AND {column} BETWEEN {int(first)} AND {int(last)}"


def _trait_key_in(keys: Collection[str]) -> str:
    """``t.trait_key IN ('a', 'b')``, quoted by SQLAlchemy's PostgreSQL dialect: COPY takes no
    bound parameters."""
    return _literal(sa.table("t", sa.column("trait_key")).c.trait_key.in_(sorted(keys)))


def _quoted(text: str) -> str:
    return _literal(sa.literal(text))


def _literal(clause: sa.ClauseElement) -> str:
    return str(clause.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
