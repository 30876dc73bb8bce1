"""Segment evaluation: Flagsmith segment rules → Roaring bitmaps, vectorised over columns."""

from membership_pipeline.evaluation.engine import (
    MembershipResult,
    evaluate_environment,
    referenced_trait_keys,
)
from membership_pipeline.evaluation.environment_data import TRAIT_COLUMNS
from membership_pipeline.evaluation.errors import (
    DuplicateSegmentKey,
    InvalidConditionValue,
    InvalidEnvironmentInput,
    InvalidRegex,
    MalformedRuleTree,
    SegmentDefinitionError,
    UnknownOperator,
    UnsupportedProperty,
)
from membership_pipeline.evaluation.trait_frames import traits_frame
from membership_pipeline.evaluation.tuning import EvaluationTuning

__all__ = [
    "TRAIT_COLUMNS",
    "DuplicateSegmentKey",
    "EvaluationTuning",
    "InvalidConditionValue",
    "InvalidEnvironmentInput",
    "InvalidRegex",
    "MalformedRuleTree",
    "MembershipResult",
    "SegmentDefinitionError",
    "UnknownOperator",
    "UnsupportedProperty",
    "evaluate_environment",
    "referenced_trait_keys",
    "traits_frame",
]
