"""Segment evaluation: Flagsmith segment rules → Roaring bitmaps, vectorised over columns.

The engine (and its compiled kernels, which import numba) loads on first use of
``evaluate_environment`` or ``MembershipResult``: code that only describes what to read
(``referenced_trait_keys``, the frames' columns) stays light to import, e.g. a Dagster code
location loaded by the command line.
"""

from typing import TYPE_CHECKING, Any

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
from membership_pipeline.evaluation.trait_keys import reads_identifiers, referenced_trait_keys
from membership_pipeline.evaluation.tuning import EvaluationTuning

if TYPE_CHECKING:
    from membership_pipeline.evaluation.engine import MembershipResult, evaluate_environment

_FROM_ENGINE = ("MembershipResult", "evaluate_environment")


def __getattr__(name: str) -> Any:
    if name in _FROM_ENGINE:
        from membership_pipeline.evaluation import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "reads_identifiers",
    "referenced_trait_keys",
    "traits_frame",
]
