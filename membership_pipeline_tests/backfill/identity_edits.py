"""Random writes to a Flagsmith source's identities and traits, as SDKs and the dashboard make
them: trait inserts, value updates (the value type changing too), trait deletes, identity
creations and deletions. Each returns the ids of the identities it changed."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa

Edit = Callable[[sa.Connection, int, random.Random], set[int]]

VALUES: list[tuple[str, dict[str, object]]] = [
    ("unicode", {"string_value": "premium"}),
    ("unicode", {"string_value": "42"}),
    ("unicode", {"string_value": "1.2.3"}),
    ("int", {"integer_value": 7}),
    ("int", {"integer_value": 1_000}),
    ("float", {"float_value": 0.5}),
    ("bool", {"boolean_value": True}),
    ("bool", {"boolean_value": False}),
]
EMPTY = {"string_value": None, "integer_value": None, "float_value": None, "boolean_value": None}


def _next_id(conn: sa.Connection, table: str) -> int:
    return int(conn.execute(sa.text(f"SELECT coalesce(max(id), 0) + 1 FROM {table}")).scalar_one())


def _identities(conn: sa.Connection, environment_id: int) -> list[int]:
    return list(
        conn.execute(
            sa.text("SELECT id FROM environments_identity WHERE environment_id = :e ORDER BY id"),
            {"e": environment_id},
        ).scalars()
    )


def _keys(conn: sa.Connection) -> list[str]:
    return list(
        conn.execute(sa.text("SELECT DISTINCT trait_key FROM environments_trait ORDER BY 1"))
        .scalars()
        .all()
    ) or ["plan"]


def _insert_trait(
    conn: sa.Connection, identity: int, key: str, value_type: str, value: dict[str, object]
) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO environments_trait (id, identity_id, trait_key, value_type, "
            "string_value, integer_value, float_value, boolean_value, created_date) VALUES "
            "(:id, :i, :k, :t, :string_value, :integer_value, :float_value, :boolean_value, :now)"
        ),
        {"id": _next_id(conn, "environments_trait"), "i": identity, "k": key, "t": value_type,
         **EMPTY, **value, "now": datetime.now(UTC)},
    )  # fmt: skip


def _pick_trait(
    conn: sa.Connection, environment_id: int, rng: random.Random
) -> tuple[int, int] | None:
    """A random trait of the environment: its id and its identity's."""
    traits = _traits(conn, environment_id)
    return rng.choice(traits) if traits else None


def _traits(conn: sa.Connection, environment_id: int) -> list[tuple[int, int]]:
    return [
        (r.id, r.identity_id)
        for r in conn.execute(
            sa.text(
                "SELECT t.id, t.identity_id FROM environments_trait t JOIN environments_identity i "
                "ON i.id = t.identity_id WHERE i.environment_id = :e ORDER BY t.id"
            ),
            {"e": environment_id},
        )
    ]


def insert_trait(conn: sa.Connection, environment_id: int, rng: random.Random) -> set[int]:
    identity = rng.choice(_identities(conn, environment_id))
    key = f"{rng.choice(_keys(conn))}"
    exists = conn.execute(
        sa.text("SELECT 1 FROM environments_trait WHERE identity_id = :i AND trait_key = :k"),
        {"i": identity, "k": key},
    ).first()
    if exists:
        return update_value(conn, environment_id, rng)
    value_type, value = rng.choice(VALUES)
    _insert_trait(conn, identity, key, value_type, value)
    return {identity}


def update_value(conn: sa.Connection, environment_id: int, rng: random.Random) -> set[int]:
    picked = _pick_trait(conn, environment_id, rng)
    if picked is None:
        return set()
    trait_id, identity = picked
    value_type, value = rng.choice(VALUES)  # the type may change: "42" → 7 → True
    conn.execute(
        sa.text(
            "UPDATE environments_trait SET value_type = :t, string_value = :string_value, "
            "integer_value = :integer_value, float_value = :float_value, "
            "boolean_value = :boolean_value WHERE id = :id"
        ),
        {"t": value_type, **EMPTY, **value, "id": trait_id},
    )
    return {identity}


def delete_trait(conn: sa.Connection, environment_id: int, rng: random.Random) -> set[int]:
    picked = _pick_trait(conn, environment_id, rng)
    if picked is None:
        return set()
    trait_id, identity = picked
    conn.execute(sa.text("DELETE FROM environments_trait WHERE id = :id"), {"id": trait_id})
    return {identity}


def create_identity(conn: sa.Connection, environment_id: int, rng: random.Random) -> set[int]:
    identifier = f"new-{rng.getrandbits(40):x}"
    identity = _next_id(conn, "environments_identity")
    conn.execute(
        sa.text(
            "INSERT INTO environments_identity (id, identifier, environment_id, created_date) "
            "VALUES (:id, :identifier, :e, :now)"
        ),
        {"id": identity, "identifier": identifier, "e": environment_id, "now": datetime.now(UTC)},
    )
    value_type, value = rng.choice(VALUES)
    _insert_trait(conn, identity, rng.choice(_keys(conn)), value_type, value)
    return {int(identity)}


def delete_identity(conn: sa.Connection, environment_id: int, rng: random.Random) -> set[int]:
    identities = _identities(conn, environment_id)
    if len(identities) < 2:
        return set()
    identity = rng.choice(identities)
    conn.execute(sa.text("DELETE FROM environments_trait WHERE identity_id = :i"), {"i": identity})
    conn.execute(sa.text("DELETE FROM environments_identity WHERE id = :i"), {"i": identity})
    return {identity}


IDENTITY_EDITS: dict[str, Edit] = {
    "insert_trait": insert_trait,
    "update_value": update_value,
    "delete_trait": delete_trait,
    "create_identity": create_identity,
    "delete_identity": delete_identity,
}


def apply_identity_edit(url: str, kind: str, environment_id: int, rng: random.Random) -> set[int]:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            return IDENTITY_EDITS[kind](conn, environment_id, rng)
    finally:
        engine.dispose()
