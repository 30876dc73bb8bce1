"""An environment's segment definitions, read in the caller's snapshot: its project's canonical,
live segments (``deleted_at`` null, ``version_of_id`` the segment itself or null), their rules
at any depth and their conditions, soft-deleted rows skipped, built into flag-engine's segment
JSON by ``segment_tree``."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.sources.segment_tree import (
    MAX_RULE_DEPTH,
    ConditionRow,
    RuleRow,
    SegmentRow,
    build_segment_trees,
)
from membership_pipeline.structured_logging import get_logger

log = get_logger("source")

_CANONICAL = (
    "SELECT id FROM segments_segment WHERE project_id = :project_id "
    "AND deleted_at IS NULL AND (version_of_id IS NULL OR version_of_id = id)"
)
_TREE = f"""
    WITH RECURSIVE tree(id, segment_id, parent_rule_id, type, depth) AS (
        SELECT id, segment_id, rule_id, type, 0 FROM segments_segmentrule
        WHERE deleted_at IS NULL AND segment_id IN ({_CANONICAL})
        UNION ALL
        SELECT r.id, r.segment_id, r.rule_id, r.type, t.depth + 1
        FROM segments_segmentrule r JOIN tree t ON r.rule_id = t.id
        WHERE r.deleted_at IS NULL AND r.segment_id IS NULL AND t.depth < {MAX_RULE_DEPTH}
    )
"""


def read_segments(conn: sa.Connection, info: EnvironmentInfo) -> list[dict[str, Any]]:
    params = {"project_id": info.project_id}
    segment_rows = conn.execute(
        sa.text(f"SELECT id, name FROM segments_segment WHERE id IN ({_CANONICAL})"), params
    )
    segments = [SegmentRow(row.id, row.name) for row in segment_rows]
    rules = [
        RuleRow(row.id, row.segment_id, row.parent_rule_id, row.type)
        for row in conn.execute(
            sa.text(f"{_TREE} SELECT id, segment_id, parent_rule_id, type FROM tree"), params
        )
    ]
    conditions = [
        ConditionRow(row.id, row.rule_id, row.operator, row.property, row.value)
        for row in conn.execute(
            sa.text(
                f"{_TREE} SELECT c.id, c.rule_id, c.operator, c.property, c.value "
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
