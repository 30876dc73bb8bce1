"""Trait rows laid out the way a live Flagsmith deployment leaves them, for the benchmarks.

Identities are created in id order (Flagsmith's ids are serial), and an identity's first traits
come with it; but SDKs go on writing traits for years, so most rows were last written long after
their identity was created, interleaved with every other identity's writes. Flagsmith writes a
changed trait in place (an UPDATE: PostgreSQL puts the new row version wherever there is room)
and deletes traits, both of which leave dead row versions until vacuum. ``scatter_traits``
rewrites one environment's trait rows in that shape:

1. each row gets a last-written time: its identity's creation for ``FIRST_WRITE_SHARE`` of the
   rows, else a time drawn between its identity's creation and now; the rows are inserted in
   that order, with fresh serial ids (so the primary key follows the heap, as in Flagsmith);
2. ``REWRITTEN_SHARE`` of them are written again (an UPDATE that keeps the value: the row moves)
   and ``DELETED_SHARE`` deleted;
3. ``VACUUM ANALYZE``, as autovacuum would: dead rows become free space, the visibility map and
   planner statistics are set.

Deterministic: every draw is a hash of the row's identity and key.
"""

from __future__ import annotations

import sqlalchemy as sa

FIRST_WRITE_SHARE = 0.4
REWRITTEN_SHARE = 0.15
DELETED_SHARE = 0.02

# A uniform draw in [0, 1) from a row's identity and key (and a salt), without random().
_DRAW = (
    "((hashtext(t.trait_key || '/' || {identity} || '/{salt}')::int8 + 2147483648) / 4294967296.0)"
)


def scatter_traits(
    conn: sa.Connection, environment_id: int, first_identity: int, span: int, copies: int
) -> int:
    """Rewrite the environment's traits as ``copies`` copies of those of its identities with
    ``first_identity <= id < first_identity + span`` (copy ``c`` shifts identity ids by
    ``c * span``), laid out as a live deployment leaves them (see the module). Returns the
    trait rows written. The caller vacuums (outside a transaction)."""
    conn.execute(sa.text("DROP TABLE IF EXISTS membership_scatter_base"))
    conn.execute(
        sa.text(
            "CREATE TEMP TABLE membership_scatter_base AS SELECT t.identity_id, t.trait_key, "
            "t.value_type, t.boolean_value, t.integer_value, t.string_value, t.float_value, "
            "t.created_date FROM environments_trait t JOIN environments_identity i "
            "ON i.id = t.identity_id WHERE i.environment_id = :e "
            "AND i.id >= :first AND i.id < :first + :span"
        ),
        {"e": environment_id, "first": first_identity, "span": span},
    )
    conn.execute(
        sa.text(
            "DELETE FROM environments_trait t USING environments_identity i "
            "WHERE i.id = t.identity_id AND i.environment_id = :e"
        ),
        {"e": environment_id},
    )
    next_id = conn.execute(sa.text("SELECT coalesce(max(id), 0) + 1 FROM environments_trait"))
    first_trait = next_id.scalar_one()
    last_identity = first_identity + copies * span - 1
    first_draw = _DRAW.format(identity="t.identity_id", salt="first")
    when_draw = _DRAW.format(identity="t.identity_id", salt="when")
    written = conn.execute(
        sa.text(
            "INSERT INTO environments_trait (id, identity_id, trait_key, value_type, "
            "boolean_value, integer_value, string_value, float_value, created_date) "
            "SELECT :first_trait - 1 + row_number() OVER (ORDER BY written, identity_id, "
            "trait_key), identity_id, trait_key, value_type, boolean_value, integer_value, "
            "string_value, float_value, created_date FROM ("
            "  SELECT t.identity_id, t.trait_key, t.value_type, t.boolean_value, "
            "  t.integer_value, t.string_value, t.float_value, t.created_date, "
            f"  CASE WHEN {first_draw} < :first_share THEN t.identity_id::float8 "
            f"  ELSE t.identity_id + {when_draw} * (:last_identity - t.identity_id) END AS written"
            "  FROM (SELECT b.identity_id + c * :span AS identity_id, b.trait_key, b.value_type, "
            "    b.boolean_value, b.integer_value, b.string_value, b.float_value, b.created_date "
            "    FROM membership_scatter_base b CROSS JOIN generate_series(0, :copies - 1) c) t"
            ") ordered ORDER BY written, identity_id, trait_key"
        ),
        {
            "first_trait": first_trait,
            "first_share": FIRST_WRITE_SHARE,
            "last_identity": last_identity,
            "span": span,
            "copies": copies,
        },
    ).rowcount
    rewritten = _DRAW.format(identity="t.identity_id", salt="rewrite")
    conn.execute(
        sa.text(
            "UPDATE environments_trait t SET value_type = t.value_type "
            f"WHERE t.id >= :first_trait AND {rewritten} < :share"
        ),
        {"first_trait": first_trait, "share": REWRITTEN_SHARE},
    )
    deleted = _DRAW.format(identity="t.identity_id", salt="delete")
    gone = conn.execute(
        sa.text(
            f"DELETE FROM environments_trait t WHERE t.id >= :first_trait AND {deleted} < :share"
        ),
        {"first_trait": first_trait, "share": DELETED_SHARE},
    ).rowcount
    conn.execute(sa.text("DROP TABLE membership_scatter_base"))
    return written - gone
