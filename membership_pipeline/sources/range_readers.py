"""Reading one environment's identities and traits (or one id range of them) as Arrow tables, in
the caller's snapshot: the protocol both backends meet, what they return, and what they share.

- ``ArrowRangeReader`` (``arrow_reader``): PostgreSQL, through ADBC's binary COPY on parallel
  connections that join the caller's snapshot;
- ``SqlRangeReader`` (``sql_range_reader``): any SQLAlchemy database (SQLite, the embedded
  default), pandas reading in bounded chunks.

Both return the same tables; ``identity_columns`` applies Flagsmith's trait rules to either.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from membership_pipeline.model.environment import EnvironmentInfo

IdRange = tuple[int, int] | None  # first and last identity id; None: the whole environment

_IDENTITY_FIELDS = [("id", pa.int64()), ("identifier", pa.string())]
_SYSTEM_TRAITS_FIELD = ("system_traits", pa.string())  # JSON text; a column not every schema has


def identity_schema(system_traits: bool) -> pa.Schema:
    return pa.schema([*_IDENTITY_FIELDS, *([_SYSTEM_TRAITS_FIELD] if system_traits else [])])


TRAIT_SCHEMA = pa.schema(
    [
        ("identity_id", pa.int64()),
        # Few distinct keys: dictionary-encoded (one key per query needs no string per row).
        ("trait_key", pa.dictionary(pa.int32(), pa.string())),
        ("value_type", pa.dictionary(pa.int32(), pa.string())),
        ("string_value", pa.string()),
        ("integer_value", pa.int64()),
        ("float_value", pa.float64()),
        ("boolean_value", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class RangeQuery:
    info: EnvironmentInfo
    id_range: IdRange
    trait_keys: Collection[str] | None  # None: every key
    system_traits: bool  # whether ``environments_identity`` has the column
    parallel_reads: int = 1
    # False: every identifier reads as the empty string (no segment reads one).
    identifiers: bool = True
    # The range's ids as a published version holds them (sorted; only without identifiers):
    # the identity rows are then not read, only the system traits of those that have any and
    # the range's count, largest and sum of ids (``RawRange.checksum``) to compare.
    known_ids: np.ndarray | None = None
    # The trait table has a covering index (``trait_index``): each key's rows are then read
    # by their own index-only scan.
    covering_index: bool = False
    # These identities only (a delta backfill's changed ones), instead of an id range.
    ids: np.ndarray | None = None


@dataclass
class RawRange:
    """``identities`` (``id``, ``identifier``[, ``system_traits``]) ordered by id; ``traits`` in
    :data:`TRAIT_SCHEMA`; ``checksum`` when the query gave ``known_ids``."""

    identities: pa.Table
    traits: pa.Table
    checksum: tuple[int, int, int] | None = None


class RangeReader(Protocol):
    path: str  # how it reads ("adbc", "pandas"): the source's read event says it

    def read(self, conn: sa.Connection, query: RangeQuery) -> RawRange: ...


def known_identities(ids: np.ndarray, system_traits: pa.Table | None) -> pa.Table:
    """Identity rows from known ids: empty identifiers, and the system traits read for the
    identities that have them (one not among ``ids`` is left out: the checksum tells)."""
    count = len(ids)
    no_text = pa.py_buffer(np.zeros(count + 1, dtype=np.int32))  # every offset 0: all ""
    columns: dict[str, pa.Array] = {
        "id": pa.array(ids, pa.int64()),
        "identifier": pa.StringArray.from_buffers(count, no_text, pa.py_buffer(b"")),
    }
    if system_traits is not None:
        found = system_traits["id"].to_numpy()
        at = np.searchsorted(ids, found)
        inside = (at < count) & (ids[np.minimum(at, max(count - 1, 0))] == found)
        which = np.full(count, -1, dtype=np.int64)
        which[at[inside]] = np.flatnonzero(inside)
        texts = system_traits["system_traits"].combine_chunks()
        columns["system_traits"] = texts.take(pa.array(which, mask=which < 0))
    return pa.table(columns)
