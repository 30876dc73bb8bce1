"""Bad input: a typed error that names the problem, and one bad segment never stops the rest."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from structlog.testing import capture_logs

from membership_pipeline.evaluation import (
    DuplicateSegmentKey,
    InvalidConditionValue,
    InvalidEnvironmentInput,
    InvalidRegex,
    MalformedRuleTree,
    UnknownOperator,
    UnsupportedProperty,
    evaluate_environment,
    traits_frame,
)
from membership_pipeline.evaluation.trait_frames import traits_frame_from_rows
from membership_pipeline_tests.evaluation.membership_helpers import ENVIRONMENT, condition, segment

IDENTITIES = pd.DataFrame({"id": [1, 2, 3], "identifier": ["a", "b", "c"]})
TRAITS = traits_frame({1: {"plan": "pro"}, 2: {"plan": "free"}})
GOOD = segment(condition("plan", "EQUAL", "pro"), key="good")


def _evaluate(*segments: dict[str, Any]):
    return evaluate_environment(ENVIRONMENT, IDENTITIES, TRAITS, [GOOD, *segments])


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (
            segment(condition("plan", "LIKE", "x"), key="b"),
            UnknownOperator,
            "unknown operator 'LIKE'",
        ),
        (
            segment(condition("plan", "REGEX", "(unclosed"), key="b"),
            InvalidRegex,
            "invalid regular expression",
        ),
        ({"key": "b", "rules": [{"type": "SOME"}]}, MalformedRuleTree, "rule type 'SOME'"),
        ({"key": "b", "rules": {"type": "ALL"}}, MalformedRuleTree, "expected a list"),
        ({"key": "b"}, MalformedRuleTree, "missing list of rules"),
        (
            {"key": "b", "rules": [{"type": "ALL", "conditions": ["plan"]}]},
            MalformedRuleTree,
            "JSON object",
        ),
        (segment(condition(None, "EQUAL", "x"), key="b"), MalformedRuleTree, "needs a property"),
        (segment(condition("plan", "EQUAL", 5), key="b"), InvalidConditionValue, "got int 5"),
        (
            segment(condition("$.flags.beta.enabled", "EQUAL", "true"), key="b"),
            UnsupportedProperty,
            "$flags",
        ),
        (
            segment(condition("$.identity.traits.*", "EQUAL", "x"), key="b"),
            UnsupportedProperty,
            "several values",
        ),
    ],
)
def test_bad_segment_is_reported_and_others_computed(bad: dict, error: type, message: str) -> None:
    with capture_logs() as events:
        result = _evaluate(bad)
    assert list(result.segments["good"]) == [1]
    failure = result.failures["b"]
    assert isinstance(failure, error)
    assert message in str(failure)
    assert "segment 'b'" in str(failure)
    failed = [e for e in events if e["event"] == "segment_membership.evaluation.segment_failed"]
    assert failed and failed[0]["segment"] == "b" and failed[0]["reason"] == failure.reason_code


def test_error_names_the_condition_path() -> None:
    bad = {
        "key": "deep",
        "rules": [
            {
                "type": "ALL",
                "rules": [
                    {
                        "type": "ANY",
                        "conditions": [
                            GOOD["rules"][0]["conditions"][0],
                            condition("x", "NOPE", "1"),
                        ],
                    }
                ],
            }
        ],
    }
    failure = _evaluate(bad).failures["deep"]
    assert failure.location == "rules[0].rules[0].conditions[1]"


def test_duplicate_segment_keys_fail_both_copies_only() -> None:
    result = _evaluate(segment(condition("plan", "EQUAL", "free"), key="dup"), segment(key="dup"))
    assert isinstance(result.failures["dup"], DuplicateSegmentKey)
    assert "dup" not in result.segments
    assert list(result.segments["good"]) == [1]


@pytest.mark.parametrize(
    ("identities", "traits", "message"),
    [
        (pd.DataFrame({"id": [1, -1], "identifier": ["a", "b"]}), TRAITS, "outside 0..2**32-1"),
        (pd.DataFrame({"id": [1, 2**32], "identifier": ["a", "b"]}), TRAITS, "outside 0..2**32-1"),
        (
            pd.DataFrame({"id": [1, 1, 2], "identifier": ["a", "b", "c"]}),
            TRAITS,
            "duplicate identity id(s), e.g. [1]",
        ),
        (pd.DataFrame({"id": [1.5], "identifier": ["a"]}), TRAITS, "must be integers"),
        (pd.DataFrame({"id": [1]}), TRAITS, "lack the column(s) ['identifier']"),
        (
            IDENTITIES,
            traits_frame({9: {"plan": "x"}}),
            "not in the environment, e.g. identity ids [9]",
        ),
        (
            IDENTITIES,
            traits_frame_from_rows([(1, "plan", "a"), (1, "plan", "b")]),
            "identity 1 has trait 'plan' more than once",
        ),
        (IDENTITIES, TRAITS.assign(value_type="text"), "unknown trait value_type(s) ['text']"),
        (
            IDENTITIES,
            TRAITS.assign(string_value=None),
            "has value_type 'unicode' but no string_value",
        ),
        (
            IDENTITIES,
            TRAITS.drop(columns=["float_value"]),
            "traits lack the column(s) ['float_value']",
        ),
    ],
)
def test_unusable_environment_input_raises(
    identities: pd.DataFrame, traits: pd.DataFrame, message: str
) -> None:
    with pytest.raises(InvalidEnvironmentInput) as raised:
        evaluate_environment(ENVIRONMENT, identities, traits, [GOOD])
    assert message in str(raised.value)


def test_environment_needs_a_key() -> None:
    with pytest.raises(InvalidEnvironmentInput, match="non-empty string 'key'"):
        evaluate_environment({"name": "x"}, IDENTITIES, TRAITS, [GOOD])


def test_unsupported_trait_value_type() -> None:
    with pytest.raises(InvalidEnvironmentInput, match="unsupported value type list"):
        traits_frame({1: {"tags": ["a"]}})  # type: ignore[dict-item]
