"""Flagsmith segment JSON (flag-engine's ``SegmentContext``) parsed into a validated rule tree.

Validation happens once, up front, so that evaluation never meets a malformed tree and every
error names the segment and the path of the offending rule or condition.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from membership_pipeline.evaluation.errors import (
    InvalidConditionValue,
    InvalidRegex,
    MalformedRuleTree,
    UnknownOperator,
)


class Operator(enum.StrEnum):
    EQUAL = "EQUAL"
    NOT_EQUAL = "NOT_EQUAL"
    GREATER_THAN = "GREATER_THAN"
    GREATER_THAN_INCLUSIVE = "GREATER_THAN_INCLUSIVE"
    LESS_THAN = "LESS_THAN"
    LESS_THAN_INCLUSIVE = "LESS_THAN_INCLUSIVE"
    CONTAINS = "CONTAINS"
    NOT_CONTAINS = "NOT_CONTAINS"
    REGEX = "REGEX"
    IN = "IN"
    IS_SET = "IS_SET"
    IS_NOT_SET = "IS_NOT_SET"
    MODULO = "MODULO"
    PERCENTAGE_SPLIT = "PERCENTAGE_SPLIT"


class RuleType(enum.StrEnum):
    ALL = "ALL"
    ANY = "ANY"
    NONE = "NONE"


# An IN list is kept as flag-engine reads it: every element as a string.
ConditionValue = str | tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Condition:
    property: str | None
    operator: Operator
    value: ConditionValue
    location: str


@dataclass(frozen=True, slots=True)
class Rule:
    type: RuleType
    conditions: tuple[Condition, ...]
    rules: tuple[Rule, ...]
    location: str


@dataclass(frozen=True, slots=True)
class Segment:
    key: str
    name: str
    rules: tuple[Rule, ...]


def parse_segment(raw: Mapping[str, Any]) -> Segment:
    """Validate one segment in flag-engine's JSON shape; raise a ``SegmentDefinitionError``."""
    key = _segment_key(raw)
    name = raw.get("name", key)
    rules = _rule_list(key, raw.get("rules", _MISSING), "rules", required=True)
    return Segment(key=key, name=str(name), rules=rules)


_MISSING = object()


def _segment_key(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        raise MalformedRuleTree(
            "?", "", f"a segment must be a JSON object, got {type(raw).__name__}"
        )
    key = raw.get("key")
    # Flagsmith's keys are str(segment.id); flag-engine hashes str(key), so an int key is the same.
    if isinstance(key, bool) or not isinstance(key, str | int) or key == "":
        raise MalformedRuleTree(str(key), "key", "a segment needs a non-empty string key")
    return str(key)


def _rule_list(segment_key: str, raw: Any, location: str, *, required: bool) -> tuple[Rule, ...]:
    if (raw is _MISSING or raw is None) and required:
        raise MalformedRuleTree(segment_key, location, "missing list of rules")
    items = _json_list(segment_key, raw, location)
    return tuple(_rule(segment_key, item, f"{location}[{i}]") for i, item in enumerate(items))


def _json_list(segment_key: str, raw: Any, location: str) -> Sequence[Any]:
    """A JSON list, where a missing or null one is empty."""
    if raw is _MISSING or raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise MalformedRuleTree(segment_key, location, f"expected a list, got {type(raw).__name__}")
    return raw


def _rule(segment_key: str, raw: Any, location: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise MalformedRuleTree(segment_key, location, "a rule must be a JSON object")
    try:
        rule_type = RuleType(raw.get("type"))
    except ValueError:
        raise MalformedRuleTree(
            segment_key, location, f"rule type {raw.get('type')!r} is not one of ALL, ANY, NONE"
        ) from None
    where = f"{location}.conditions"
    conditions = tuple(
        _condition(segment_key, item, f"{where}[{i}]")
        for i, item in enumerate(_json_list(segment_key, raw.get("conditions"), where))
    )
    rules = _rule_list(segment_key, raw.get("rules"), f"{location}.rules", required=False)
    return Rule(type=rule_type, conditions=conditions, rules=rules, location=location)


def _condition(segment_key: str, raw: Any, location: str) -> Condition:
    if not isinstance(raw, Mapping):
        raise MalformedRuleTree(segment_key, location, "a condition must be a JSON object")
    try:
        operator = Operator(raw.get("operator"))
    except ValueError:
        raise UnknownOperator(
            segment_key, location, f"unknown operator {raw.get('operator')!r}"
        ) from None
    prop = raw.get("property")
    if prop is not None and not isinstance(prop, str):
        raise MalformedRuleTree(segment_key, location, "the property must be a string")
    if prop is None and operator is not Operator.PERCENTAGE_SPLIT:
        # flag-engine crashes on a missing property; only PERCENTAGE_SPLIT may omit it.
        raise MalformedRuleTree(segment_key, location, f"{operator} needs a property")
    value = _condition_value(segment_key, operator, raw.get("value"), location)
    return Condition(property=prop, operator=operator, value=value, location=location)


def _condition_value(
    segment_key: str, operator: Operator, raw: Any, location: str
) -> ConditionValue:
    if raw is None or isinstance(raw, str):
        if operator is Operator.REGEX:
            try:
                re.compile(str(raw))
            except re.error as exc:
                raise InvalidRegex(
                    segment_key, location, f"invalid regular expression {raw!r}: {exc}"
                ) from None
        return raw
    if operator is Operator.IN and isinstance(raw, Sequence) and not isinstance(raw, bytes):
        return tuple(item if type(item) is str else str(item) for item in raw)
    raise InvalidConditionValue(
        segment_key,
        location,
        f"condition values are strings (IN also takes a list), got {type(raw).__name__} {raw!r}",
    )
