"""Segment edits as Flagsmith's dashboard makes them, written into a Flagsmith database by SQL:
a condition's value or operator changed, a segment renamed, soft-deleted, or created (rules and
conditions copied from another)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

CANONICAL = (
    "SELECT id FROM segments_segment WHERE project_id = :project AND deleted_at IS NULL "
    "AND (version_of_id IS NULL OR version_of_id = id)"
)


def _rows(conn: sa.Connection, query: str, **params: Any) -> list[sa.Row[Any]]:
    return list(conn.execute(sa.text(query), params))


def live_segments(conn: sa.Connection, project: int) -> list[int]:
    return sorted(r.id for r in _rows(conn, CANONICAL, project=project))


def _conditions_of(conn: sa.Connection, segment: int) -> list[sa.Row[Any]]:
    return _rows(
        conn,
        """
        WITH RECURSIVE tree(id) AS (
            SELECT id FROM segments_segmentrule WHERE segment_id = :segment
            UNION ALL
            SELECT r.id FROM segments_segmentrule r JOIN tree t ON r.rule_id = t.id
        )
        SELECT c.id, c.operator, c.property, c.value FROM segments_condition c
        WHERE c.rule_id IN (SELECT id FROM tree) AND c.deleted_at IS NULL ORDER BY c.id
        """,
        segment=segment,
    )


def edit_condition(conn: sa.Connection, project: int, rng: random.Random) -> int | None:
    """Give one condition of a random segment another value (one some condition of the project
    uses for the same property, so edits keep to values identities have) or operator. Returns
    the edited segment."""
    segments = [s for s in live_segments(conn, project) if _conditions_of(conn, s)]
    if not segments:
        return None
    segment = rng.choice(segments)
    condition = rng.choice(_conditions_of(conn, segment))
    values = sorted(
        {
            r.value
            for r in _rows(
                conn,
                "SELECT value FROM segments_condition WHERE property = :property "
                "AND value IS NOT NULL",
                property=condition.property,
            )
        }
    )
    others = [v for v in values if v != condition.value]
    new_value = rng.choice(others) if others and rng.random() < 0.7 else f"{condition.value}x"
    conn.execute(
        sa.text("UPDATE segments_condition SET value = :value, updated_at = :now WHERE id = :id"),
        {"value": new_value, "now": _now(), "id": condition.id},
    )
    return segment


def rename_segment(conn: sa.Connection, project: int, rng: random.Random) -> int | None:
    segments = live_segments(conn, project)
    if not segments:
        return None
    segment = rng.choice(segments)
    conn.execute(
        sa.text(
            "UPDATE segments_segment SET name = name || ' (renamed)', updated_at = :now "
            "WHERE id = :id"
        ),
        {"now": _now(), "id": segment},
    )
    return segment


def delete_segment(conn: sa.Connection, project: int, rng: random.Random) -> int | None:
    segments = live_segments(conn, project)
    if len(segments) < 2:
        return None
    segment = rng.choice(segments)
    conn.execute(
        sa.text("UPDATE segments_segment SET deleted_at = :now WHERE id = :id"),
        {"now": _now(), "id": segment},
    )
    return segment


def create_segment(conn: sa.Connection, project: int, rng: random.Random) -> int | None:
    """A new segment of one ALL rule holding a copy of one or two existing conditions."""
    conditions = [c for s in live_segments(conn, project) for c in _conditions_of(conn, s)]
    if not conditions:
        return None
    copied = rng.sample(conditions, min(len(conditions), rng.choice([1, 2])))
    return _insert_segment(conn, project, None, [(c.property, c.operator, c.value) for c in copied])


def add_segment(conn: sa.Connection, project: int, prop: str, operator: str, value: str) -> int:
    """A new segment of one ALL rule holding one condition."""
    return _insert_segment(conn, project, f"{prop} {operator} {value}", [(prop, operator, value)])


def _insert_segment(
    conn: sa.Connection, project: int, name: str | None, conditions: list[tuple[Any, Any, Any]]
) -> int:
    """A segment (named ``new segment <id>`` by default) of one ALL rule holding
    ``(property, operator, value)`` conditions."""
    now = _now()
    segment = _next_id(conn, "segments_segment")
    conn.execute(
        sa.text(
            "INSERT INTO segments_segment (id, name, project_id, version_of_id, created_at, "
            "updated_at) VALUES (:id, :name, :project, :id, :now, :now)"
        ),
        {"id": segment, "name": name or f"new segment {segment}", "project": project, "now": now},
    )
    rule = _next_id(conn, "segments_segmentrule")
    conn.execute(
        sa.text(
            "INSERT INTO segments_segmentrule (id, segment_id, type, created_at, updated_at) "
            "VALUES (:id, :segment, 'ALL', :now, :now)"
        ),
        {"id": rule, "segment": segment, "now": now},
    )
    for prop, operator, value in conditions:
        conn.execute(
            sa.text(
                "INSERT INTO segments_condition (id, rule_id, operator, property, value, "
                "created_at, updated_at) VALUES (:id, :rule, :operator, :property, :value, "
                ":now, :now)"
            ),
            {"id": _next_id(conn, "segments_condition"), "rule": rule, "operator": operator,
             "property": prop, "value": value, "now": now},
        )  # fmt: skip
    return segment


EDITS = {
    "edit": edit_condition,
    "rename": rename_segment,
    "delete": delete_segment,
    "create": create_segment,
}


def apply_edit(url: str, kind: str, project: int, rng: random.Random) -> int | None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            return EDITS[kind](conn, project, rng)
    finally:
        engine.dispose()


def _next_id(conn: sa.Connection, table: str) -> int:
    return int(conn.execute(sa.text(f"SELECT coalesce(max(id), 0) + 1 FROM {table}")).scalar_one())


def _now() -> datetime:
    return datetime.now(UTC)
