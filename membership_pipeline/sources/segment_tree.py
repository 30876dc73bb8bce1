"""Flagsmith's segment tables (segment → rules → nested rules → conditions) as the engine's
segment JSON (flag-engine's ``SegmentContext``).

Rows are reached from their segment downwards. A rule or condition whose parent is missing or
soft-deleted is unreachable from any segment and cannot change any membership: it is left out
and counted, never guessed into a segment.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Flagsmith's editor nests two levels; deeper trees are read up to this depth (so that a cycle
# in the parent pointers cannot recurse forever).
MAX_RULE_DEPTH = 32


@dataclass(frozen=True, slots=True)
class SegmentRow:
    id: int
    name: str


@dataclass(frozen=True, slots=True)
class RuleRow:
    id: int
    segment_id: int | None
    parent_rule_id: int | None
    type: str | None


@dataclass(frozen=True, slots=True)
class ConditionRow:
    id: int
    rule_id: int
    operator: str | None
    property: str | None
    value: str | None


@dataclass(frozen=True)
class SegmentTrees:
    segments: list[dict[str, Any]]
    unreachable_rules: int
    unreachable_conditions: int


def build_segment_trees(
    segments: Iterable[SegmentRow], rules: Iterable[RuleRow], conditions: Iterable[ConditionRow]
) -> SegmentTrees:
    """Segments in id order, each with its rules and conditions in id order (Flagsmith's)."""
    rules_by_id = {rule.id: rule for rule in rules}
    top_rules: dict[int, list[int]] = defaultdict(list)
    child_rules: dict[int, list[int]] = defaultdict(list)
    for rule in sorted(rules_by_id.values(), key=lambda r: r.id):
        if rule.segment_id is not None:
            top_rules[rule.segment_id].append(rule.id)
        elif rule.parent_rule_id is not None:
            child_rules[rule.parent_rule_id].append(rule.id)
    conditions_by_rule: dict[int, list[ConditionRow]] = defaultdict(list)
    for condition in sorted(conditions, key=lambda c: c.id):
        conditions_by_rule[condition.rule_id].append(condition)

    reached: set[int] = set()

    def rule_json(rule_id: int, depth: int) -> dict[str, Any]:
        reached.add(rule_id)
        children = child_rules.get(rule_id, []) if depth < MAX_RULE_DEPTH else []
        return {
            "type": rules_by_id[rule_id].type,
            "conditions": [
                {"property": c.property, "operator": c.operator, "value": c.value}
                for c in conditions_by_rule.get(rule_id, [])
            ],
            "rules": [rule_json(child, depth + 1) for child in children if child not in reached],
        }

    built = [
        {
            "key": str(segment.id),
            "name": segment.name,
            "rules": [rule_json(rule_id, 0) for rule_id in top_rules.get(segment.id, [])],
        }
        for segment in sorted(segments, key=lambda s: s.id)
    ]
    unreachable_conditions = sum(
        len(found) for rule_id, found in conditions_by_rule.items() if rule_id not in reached
    )
    return SegmentTrees(built, len(rules_by_id) - len(reached), unreachable_conditions)
