"""PostgreSQL: rows fetched by primary key, one index probe per key.

A row-value ``IN`` list is planned as one ``OR`` term per key, each row tested against every
term (1,300 chunk keys: 70 ms to plan, 0.2-0.35 s to run at 10M identities); ``col IN (...)``
or a join lets the planner scan every row of a version instead when its statistics predate the
write that filled it (1,000 answer rows: 0.3-0.4 s). Unnesting the keys as arrays and probing
each in a ``LATERAL`` subquery costs 10-40 ms for the same; its ``LIMIT 1`` keeps the subquery
from being flattened back into a join.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


def probed_rows(
    table: sa.Table, key_columns: Sequence[str], columns: Sequence[str], fixed: Sequence[str] = ()
) -> str:
    """A ``FROM`` item: the rows of ``table`` whose ``key_columns`` equal the bound arrays
    ``:<column>_keys`` position by position (and whose ``fixed`` columns equal ``:<column>``),
    as ``r`` with ``columns`` (``ctid`` may be one). Bind the arrays with ``key_arrays``."""
    dialect = postgresql.dialect()
    arrays = ", ".join(
        f"CAST(:{name}_keys AS {table.c[name].type.compile(dialect=dialect)}[])"
        for name in key_columns
    )
    conditions = [f"t.{name} = :{name}" for name in fixed]
    conditions += [f"t.{name} = k.{name}" for name in key_columns]
    return (
        f"unnest({arrays}) AS k({', '.join(key_columns)}) CROSS JOIN LATERAL (SELECT "
        f"{', '.join(f't.{name}' for name in columns)} FROM {table.name} t WHERE "
        f"{' AND '.join(conditions)} LIMIT 1) r"
    )


def key_arrays(key_columns: Sequence[str], keys: Sequence[Sequence[object]]) -> dict[str, list]:
    """The bound arrays for ``probed_rows``: one list per key column, from keys as tuples."""
    return {f"{name}_keys": [key[i] for key in keys] for i, name in enumerate(key_columns)}
