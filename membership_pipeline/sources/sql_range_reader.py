"""The generic range reader: any SQLAlchemy database (SQLite, the embedded default; PostgreSQL
with ``columnar=False``, for comparisons). pandas reads each query in bounded chunks into
Arrow-backed columns."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.sources.range_readers import (
    TRAIT_SCHEMA,
    IdRange,
    RangeQuery,
    RawRange,
    identity_schema,
    known_identities,
)

DEFAULT_CHUNK_ROWS = 200_000


class SqlRangeReader:
    path = "pandas"

    def __init__(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        self.chunk_rows = chunk_rows

    def read(self, conn: sa.Connection, query: RangeQuery) -> RawRange:
        info, id_range = query.info, query.id_range
        checksum = None
        if query.ids is not None:
            return self._listed(conn, query, query.ids)
        if query.known_ids is not None:
            checksum = self._checksum(conn, info, id_range)
            system = self._system_traits(conn, info, id_range) if query.system_traits else None
            identities = known_identities(query.known_ids, system)
        else:
            identities = self._identities(
                conn, info, query.system_traits, id_range, query.identifiers
            )
        traits = self._traits(conn, info, id_range, query.trait_keys)
        return RawRange(identities, traits, checksum)

    def _listed(self, conn: sa.Connection, query: RangeQuery, ids: np.ndarray) -> RawRange:
        """The listed identities that exist in the environment, and their traits."""
        listed = _id_list_filter(conn, "id")
        extra = f", {_json_text(conn)} AS system_traits" if query.system_traits else ""
        identifier = "identifier" if query.identifiers else "'' AS identifier"
        wanted = [int(i) for i in ids]
        identities = self._table(
            conn,
            listed.bindparam(
                f"SELECT id, {identifier}{extra} FROM environments_identity "
                f"WHERE environment_id = :environment_id AND {listed.clause} ORDER BY id"
            ),
            identity_schema(query.system_traits),
            environment_id=query.info.id,
            ids=wanted,
        )
        if query.trait_keys is not None and not query.trait_keys:
            return RawRange(identities, TRAIT_SCHEMA.empty_table())
        keys = "" if query.trait_keys is None else " AND t.trait_key IN :trait_keys"
        traits_listed = _id_list_filter(conn, "t.identity_id")
        traits_query = traits_listed.bindparam(
            f"""
            SELECT t.identity_id, t.trait_key, t.value_type, t.string_value, t.integer_value,
                   t.float_value, t.boolean_value
            FROM environments_trait t JOIN environments_identity i ON i.id = t.identity_id
            WHERE i.environment_id = :environment_id AND {traits_listed.clause}{keys}
            """
        )
        params: dict[str, Any] = {"environment_id": query.info.id, "ids": wanted}
        if query.trait_keys is not None:
            traits_query = traits_query.bindparams(sa.bindparam("trait_keys", expanding=True))
            params["trait_keys"] = sorted(query.trait_keys)
        return RawRange(identities, self._table(conn, traits_query, TRAIT_SCHEMA, **params))

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
        in_range, bounds = _id_range_filter("id", id_range)
        query = sa.text(
            f"SELECT id, {_json_text(conn)} AS system_traits FROM environments_identity "
            f"WHERE environment_id = :environment_id{in_range} AND system_traits IS NOT NULL"
        )
        schema = pa.schema([("id", pa.int64()), ("system_traits", pa.string())])
        return self._table(conn, query, schema, environment_id=info.id, **bounds)

    def _identities(
        self,
        conn: sa.Connection,
        info: EnvironmentInfo,
        with_system_traits: bool,
        id_range: IdRange,
        identifiers: bool = True,
    ) -> pa.Table:
        extra = f", {_json_text(conn)} AS system_traits" if with_system_traits else ""
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

    def _table(
        self, conn: sa.Connection, query: sa.TextClause, schema: pa.Schema, **params: Any
    ) -> pa.Table:
        streaming = conn.execution_options(stream_results=True, max_row_buffer=self.chunk_rows)
        chunks = [
            pa.Table.from_pandas(chunk, preserve_index=False).select(schema.names).cast(schema)
            for chunk in pd.read_sql_query(
                query, streaming, params=params, chunksize=self.chunk_rows, dtype_backend="pyarrow"
            )
        ]
        return pa.concat_tables(chunks) if chunks else schema.empty_table()


def _json_text(conn: sa.Connection) -> str:
    """``system_traits`` as its JSON text (a driver would make Python objects of it)."""
    return "CAST(system_traits AS TEXT)" if conn.dialect.name == "postgresql" else "system_traits"


@dataclass(frozen=True)
class _IdList:
    """``column`` among the ``:ids`` list: one array parameter on PostgreSQL (a plan that does
    not change with the list's length), an expanded ``IN`` elsewhere."""

    clause: str
    expanding: bool

    def bindparam(self, sql: str) -> sa.TextClause:
        text = sa.text(sql)
        return text.bindparams(sa.bindparam("ids", expanding=True)) if self.expanding else text


def _id_list_filter(conn: sa.Connection, column: str) -> _IdList:
    if conn.dialect.name == "postgresql":
        return _IdList(f"{column} = ANY(CAST(:ids AS bigint[]))", expanding=False)
    return _IdList(f"{column} IN :ids", expanding=True)


def _id_range_filter(column: str, id_range: IdRange) -> tuple[str, dict[str, int]]:
    """A bound ``AND column BETWEEN`` clause for an identity-id range (none for the whole)."""
    if id_range is None:
        return "", {}
    first, last = id_range
    return f" AND {column} BETWEEN :first_id AND :last_id", {"first_id": first, "last_id": last}
