"""The one index this project asks a Flagsmith operator to add: a covering index of the trait
table, so that a shard reads its traits by index-only scans, whatever the heap's layout.

Why: SDKs write traits for years, so one identity's rows are scattered over the heap, and a read
of an id range touches nearly every heap page of the table (each page holds rows of identities
of every range). Flagsmith's own unique ``(trait_key, identity_id)`` index orders the rows, but
the values live in the heap. With the values in the index, a shard's read walks only the index
entries of its keys and id range (heap pages only where the visibility map says a page changed
since the last vacuum), so a shard of a 10M-identity environment costs what a shard of a
1M-identity one does. The cost to the source: an index about the size of Flagsmith's unique one,
kept up on every trait write (such a write can no longer be a HOT update).

``CREATE INDEX CONCURRENTLY`` builds it without blocking Flagsmith's writes; the source reads
through it as soon as it is valid, and reads without it (one heap pass per id range) before.
"""

from __future__ import annotations

import sqlalchemy as sa

COVERING_INDEX = "membership_trait_covering"
COVERING_INDEX_SQL = (
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {COVERING_INDEX} ON environments_trait "
    "(trait_key, identity_id) INCLUDE (value_type, boolean_value, integer_value, string_value, "
    "float_value)"
)
_VALUE_COLUMNS = ("value_type", "boolean_value", "integer_value", "string_value", "float_value")

# A valid, ready index of environments_trait (as the search path finds it) that leads with
# (trait_key, identity_id) and holds every value column: whatever its name, the planner can
# answer a key's id range from it alone.
_COVERING = sa.text(
    """
    SELECT EXISTS (
        SELECT 1 FROM pg_index x
        WHERE x.indrelid = to_regclass('environments_trait') AND x.indisvalid AND x.indisready
          AND x.indpred IS NULL AND x.indexprs IS NULL
          AND (SELECT array_agg(a.attname::text ORDER BY k.position)
               FROM unnest(x.indkey) WITH ORDINALITY AS k(attnum, position)
               JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
               WHERE k.position <= 2) = ARRAY['trait_key', 'identity_id']
          AND (SELECT array_agg(a.attname::text)
               FROM unnest(x.indkey) AS k(attnum)
               JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum)
              @> CAST(:values AS text[])
    )
    """
)


def has_covering_index(conn: sa.Connection) -> bool:
    """Whether the trait table has a covering index (see the module); False off PostgreSQL."""
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(_COVERING, {"values": list(_VALUE_COLUMNS)}).scalar_one())


def describe_covering_index(conn: sa.Connection) -> tuple[bool, str]:
    """Whether shards read by index-only scans, and one line saying why (for an operator)."""
    if conn.dialect.name != "postgresql":
        return False, "the trait table is not PostgreSQL's: shards read it without an index"
    if has_covering_index(conn):
        return True, "environments_trait has a covering index: shards read by index-only scans"
    invalid = conn.execute(
        sa.text("SELECT NOT x.indisvalid FROM pg_index x WHERE x.indexrelid = to_regclass(:name)"),
        {"name": COVERING_INDEX},
    ).scalar_one_or_none()
    if invalid:
        return False, (
            f"{COVERING_INDEX} is invalid (its build was interrupted): "
            f"DROP INDEX CONCURRENTLY {COVERING_INDEX}, then create it again"
        )
    return False, (
        "environments_trait has no covering index: shards of big environments read most of "
        "its heap; create it with `membership trait-index create` or: " + COVERING_INDEX_SQL
    )


def create_covering_index(engine: sa.Engine) -> None:
    """Build the covering index without blocking Flagsmith's writes (``CONCURRENTLY`` runs
    outside a transaction; it needs the table's owner)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(COVERING_INDEX_SQL))
