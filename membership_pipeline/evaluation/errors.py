"""Typed errors of the evaluation engine.

Environment-level problems (the identities or traits themselves are unusable) raise
:class:`InvalidEnvironmentInput`. Problems of one segment raise a :class:`SegmentDefinitionError`
subclass, which the engine records for that segment while it computes all the others.
"""

from __future__ import annotations


class InvalidEnvironmentInput(ValueError):
    """The identities or traits of an environment cannot be evaluated at all."""


class SegmentDefinitionError(ValueError):
    """One segment cannot be evaluated; names the segment and where in its rule tree."""

    reason_code = "invalid_segment"

    def __init__(self, segment_key: str, location: str, message: str) -> None:
        self.segment_key = segment_key
        self.location = location
        self.message = message
        where = f" at {location}" if location else ""
        super().__init__(f"segment {segment_key!r}{where}: {message}")


class MalformedRuleTree(SegmentDefinitionError):
    reason_code = "malformed_rule_tree"


class UnknownOperator(SegmentDefinitionError):
    reason_code = "unknown_operator"


class InvalidConditionValue(SegmentDefinitionError):
    reason_code = "invalid_condition_value"


class InvalidRegex(SegmentDefinitionError):
    reason_code = "invalid_regex"


class UnsupportedProperty(SegmentDefinitionError):
    reason_code = "unsupported_property"


class DuplicateSegmentKey(SegmentDefinitionError):
    reason_code = "duplicate_segment_key"
