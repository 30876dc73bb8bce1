"""Each operator's edge cases, written out: our answer and flag-engine's must both be the one
in the table."""

from __future__ import annotations

from typing import Any

import pytest

from membership_pipeline_tests.evaluation.membership_helpers import both_answers, condition, segment

# (trait value, operator, condition value, member?)
CASES: list[tuple[Any, str, Any, bool]] = [
    # EQUAL coerces the condition value to the trait's type.
    ("pro", "EQUAL", "pro", True),
    ("pro", "EQUAL", "Pro", False),
    (42, "EQUAL", "42", True),
    (42, "EQUAL", "42.0", False),  # int("42.0") fails: no match
    ("42", "EQUAL", "42", True),  # a numeric string is an int to flag-engine
    ("042", "EQUAL", "42", True),
    ("1e5", "EQUAL", "1e5", True),  # not an int or float literal: stays a string
    (1.5, "EQUAL", "1.5", True),
    ("1.50", "EQUAL", "1.5", True),
    (True, "EQUAL", "true", True),
    (True, "EQUAL", "anything", True),  # only "False"/"false" cast to False
    (False, "EQUAL", "false", True),
    (False, "EQUAL", "False", True),
    (True, "EQUAL", "False", False),
    (1, "EQUAL", "True", False),
    ("", "EQUAL", "", True),
    ("None", "EQUAL", None, True),  # a null condition value reads as "None" for strings
    (7, "NOT_EQUAL", "8", True),
    (7, "NOT_EQUAL", "x", False),  # the cast fails: no match, even for NOT_EQUAL
    ("a", "NOT_EQUAL", "b", True),
    # Ordering: numbers numerically, strings lexically.
    (10, "GREATER_THAN", "9", True),
    ("10", "GREATER_THAN", "9", True),  # "10" is the int 10
    ("b10", "GREATER_THAN", "b9", False),  # lexical
    (2.5, "GREATER_THAN_INCLUSIVE", "2.5", True),
    (2, "LESS_THAN", "2.5", False),  # int("2.5") fails
    (2.0, "LESS_THAN", "2.5", True),
    (-1, "LESS_THAN_INCLUSIVE", "-1", True),
    (2**63 - 1, "LESS_THAN", "9223372036854775808", True),  # beyond int64 on the other side
    (float("inf"), "GREATER_THAN", "1e308", True),
    # Semver: only string traits, only with the ":semver" suffix.
    ("1.10.0", "GREATER_THAN", "1.9.0:semver", True),
    ("1.10.0", "GREATER_THAN", "1.9.0", False),  # lexical without the suffix
    ("2.0.0-rc.1", "LESS_THAN", "2.0.0:semver", True),
    ("1.2", "EQUAL", "1.2.0:semver", False),  # "1.2" is a float, not semver
    ("not-a-version", "GREATER_THAN", "1.0.0:semver", False),
    ("1.2.3", "EQUAL", "1.2.3:semver", True),
    ("1.2.3-beta", "CONTAINS", "beta:semver", True),  # flag-engine iterates the version's parts
    # CONTAINS / NOT_CONTAINS: substrings of strings only.
    ("user@example.com", "CONTAINS", "@example", True),
    (12345, "CONTAINS", "23", False),
    ("abc", "NOT_CONTAINS", "x", True),
    ("abc", "NOT_CONTAINS", "b", False),
    (12345, "NOT_CONTAINS", "9", False),  # not a string: no match
    ("abc", "NOT_CONTAINS", None, True),  # "None" is not in "abc"
    # REGEX matches at the start of str(value).
    ("pro-trial", "REGEX", "pro", True),
    ("trial-pro", "REGEX", "pro", False),
    (42, "REGEX", "^4", True),
    ("007", "REGEX", "^0", False),  # coerced to 7 first
    (True, "REGEX", "^True$", True),
    (-0.0, "REGEX", "^-0\\.0$", True),
    # IN: lists, JSON lists, comma strings; ints compare as strings; floats and bools never.
    ("pro", "IN", "free,pro", True),
    ("pro", "IN", "free, pro", False),  # no trimming
    (42, "IN", "41,42", True),
    ("42", "IN", ["42"], True),
    (42, "IN", [42, 43], True),
    (1.5, "IN", "1.5", False),
    (True, "IN", "True", False),
    ("a", "IN", '["a", "b"]', True),
    ("[a", "IN", "[a,b", True),  # invalid JSON: split on commas
    ("1.0", "IN", "[1.0]", False),  # coerced to a float: never IN
    ("x", "IN", "", False),
    ("", "IN", "", True),
    # IS_SET / IS_NOT_SET
    ("", "IS_SET", None, True),
    (False, "IS_NOT_SET", None, False),
    # MODULO: "divisor|remainder", Python's float modulo, ints and floats (and bools) only.
    (10, "MODULO", "3|1", True),
    (-7, "MODULO", "3|2", True),  # Python's sign convention
    (7.5, "MODULO", "2.5|0", True),
    (7.5, "MODULO", "2|1.5", True),
    (True, "MODULO", "2|1", True),
    ("10", "MODULO", "3|1", True),  # the numeric string is the int 10
    ("ten", "MODULO", "3|1", False),
    (10, "MODULO", "3", False),
    (10, "MODULO", "3|1|0", False),
    (10, "MODULO", "", False),
    (-5, "MODULO", "inf|5", False),  # -5 % inf is inf
    (5, "MODULO", "inf|5", True),
]


@pytest.mark.parametrize(("trait", "operator", "value", "expected"), CASES)
def test_operator_edge_case(trait: Any, operator: str, value: Any, expected: bool) -> None:
    ours, theirs = both_answers({1: {"t": trait}, 2: {}}, segment(condition("t", operator, value)))
    assert theirs == ({1} if expected else set()) | ({2} if operator == "IS_NOT_SET" else set())
    assert ours == theirs


@pytest.mark.parametrize(
    "operator", ["EQUAL", "NOT_EQUAL", "CONTAINS", "NOT_CONTAINS", "REGEX", "IN", "MODULO"]
)
def test_missing_trait_never_matches(operator: str) -> None:
    ours, theirs = both_answers({1: {}}, segment(condition("t", operator, "1|0")))
    assert ours == theirs == set()


def test_modulo_by_zero_is_no_match_where_flag_engine_raises() -> None:
    """flag-engine raises ZeroDivisionError for every identity; we define it as no match."""
    from membership_pipeline.evaluation import evaluate_environment, traits_frame
    from membership_pipeline_tests.evaluation.membership_helpers import (
        ENVIRONMENT,
        identities_frame,
    )

    traits = {1: {"n": 4}, 2: {"n": 4.0}}
    seg = segment(condition("n", "MODULO", "0|0"))
    result = evaluate_environment(
        ENVIRONMENT, identities_frame(traits), traits_frame(traits), [seg]
    )
    assert len(result.segments["7"]) == 0

    from flag_engine.segments.evaluator import is_context_in_segment

    context = {
        "environment": ENVIRONMENT,
        "identity": {"identifier": "x", "key": "1", "traits": {"n": 4}},
    }
    with pytest.raises(ZeroDivisionError):
        is_context_in_segment(context, seg)  # type: ignore[arg-type]


@pytest.mark.parametrize("operator", ["IN", "PERCENTAGE_SPLIT"])
def test_null_value_is_no_match_where_flag_engine_raises(operator: str) -> None:
    from membership_pipeline.evaluation import evaluate_environment, traits_frame
    from membership_pipeline_tests.evaluation.membership_helpers import (
        ENVIRONMENT,
        identities_frame,
    )

    traits = {1: {"t": "x"}}
    seg = segment(condition("t", operator, None))
    result = evaluate_environment(
        ENVIRONMENT, identities_frame(traits), traits_frame(traits), [seg]
    )
    assert len(result.segments["7"]) == 0


def test_property_reads_jsonpath_and_literal_trait_wins() -> None:
    traits = {1: {}, 2: {"$.identity.identifier": "override"}, 3: {"plan": "pro"}}
    for prop, value, expected in [
        ("$.identity.identifier", "user-1", {1}),
        ("$.identity.identifier", "override", {2}),  # a trait with the literal key wins
        ("$.identity.traits.plan", "pro", {3}),
        ("$.environment.name", "Production", {1, 2, 3}),
        ("$.environment.key", "env_key", {1, 2, 3}),
        ("$.identity", "x", set()),  # an object is not a value
        ("$.not a path", "x", set()),  # invalid JSONPath: a (missing) trait
    ]:
        ours, theirs = both_answers(traits, segment(condition(prop, "EQUAL", value)))
        assert ours == theirs == expected, prop


def test_rule_semantics_empty_and_nested() -> None:
    traits = {1: {"a": 1}, 2: {"a": 2}, 3: {}}
    a1 = condition("a", "EQUAL", "1")
    a2 = condition("a", "EQUAL", "2")
    cases = [
        ({"key": "1", "name": "no rules", "rules": []}, set()),
        ({"key": "2", "name": "empty rule", "rules": [{"type": "ALL"}]}, {1, 2, 3}),
        (
            {"key": "3", "name": "empty NONE", "rules": [{"type": "NONE", "conditions": []}]},
            {1, 2, 3},
        ),
        ({"key": "4", "name": "none", "rules": [{"type": "NONE", "conditions": [a1, a2]}]}, {3}),
        (
            {
                "key": "5",
                "name": "ANY with conditions and rules",
                "rules": [
                    {
                        "type": "ANY",
                        "conditions": [a1],
                        "rules": [{"type": "ALL", "conditions": [a2]}],
                    }
                ],
            },
            set(),  # any(conditions) AND any(rules): 1 fails the rules, 2 the conditions
        ),
        (
            {
                "key": "6",
                "name": "NONE of nested",
                "rules": [{"type": "NONE", "rules": [{"type": "ANY", "conditions": [a1, a2]}]}],
            },
            {3},
        ),
    ]
    for seg, expected in cases:
        ours, theirs = both_answers(traits, seg)
        assert ours == theirs == expected, seg["name"]
