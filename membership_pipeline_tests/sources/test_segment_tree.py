"""Segment rows → segment JSON: nesting, Flagsmith's id order, unreachable rows left out."""

from __future__ import annotations

from membership_pipeline.sources.segment_tree import (
    ConditionRow,
    RuleRow,
    SegmentRow,
    build_segment_trees,
)


def test_nested_rules_in_id_order_with_their_conditions() -> None:
    built = build_segment_trees(
        [SegmentRow(2, "b"), SegmentRow(1, "a")],
        [
            RuleRow(10, 1, None, "ALL"),
            RuleRow(12, None, 10, "NONE"),
            RuleRow(11, None, 10, "ANY"),
            RuleRow(20, 2, None, "ANY"),
        ],
        [
            ConditionRow(101, 11, "EQUAL", "plan", "pro"),
            ConditionRow(100, 11, "IN", "country", "DE,FR"),
            ConditionRow(102, 12, "IS_SET", "beta", None),
        ],
    )
    assert [s["key"] for s in built.segments] == ["1", "2"]
    first = built.segments[0]
    assert first["rules"][0]["type"] == "ALL"
    assert [r["type"] for r in first["rules"][0]["rules"]] == ["ANY", "NONE"]
    assert [c["operator"] for c in first["rules"][0]["rules"][0]["conditions"]] == ["IN", "EQUAL"]
    assert built.segments[1] == {
        "key": "2",
        "name": "b",
        "rules": [{"type": "ANY", "conditions": [], "rules": []}],
    }
    assert (built.unreachable_rules, built.unreachable_conditions) == (0, 0)


def test_rows_without_a_live_parent_are_counted_not_attached() -> None:
    built = build_segment_trees(
        [SegmentRow(1, "a")],
        [RuleRow(10, 1, None, "ALL"), RuleRow(30, None, 99, "ALL")],  # 99: deleted parent
        [ConditionRow(300, 30, "EQUAL", "x", "y"), ConditionRow(301, 77, "EQUAL", "x", "y")],
    )
    assert built.segments[0]["rules"] == [{"type": "ALL", "conditions": [], "rules": []}]
    assert (built.unreachable_rules, built.unreachable_conditions) == (1, 2)


def test_a_segment_without_rules_is_kept_and_matches_nobody_downstream() -> None:
    built = build_segment_trees([SegmentRow(5, "empty")], [], [])
    assert built.segments == [{"key": "5", "name": "empty", "rules": []}]
