"""Small environments for hand-written tests, answered by our engine and by flag-engine."""

from __future__ import annotations

from typing import Any

import pandas as pd

from membership_pipeline.evaluation import EvaluationTuning, evaluate_environment, traits_frame
from membership_pipeline_tests.evaluation.flag_engine_oracle import (
    identity_contexts,
    reference_members,
)

ENVIRONMENT = {"key": "env_key", "name": "Production"}


def segment(*conditions: dict[str, Any], rule_type: str = "ALL", key: str = "7") -> dict[str, Any]:
    return {
        "key": key,
        "name": f"segment {key}",
        "rules": [{"type": rule_type, "conditions": list(conditions)}],
    }


def condition(prop: str | None, operator: str, value: Any) -> dict[str, Any]:
    return {"property": prop, "operator": operator, "value": value}


def identities_frame(
    traits: dict[int, dict[str, Any]], keys: dict[int, str] | None = None
) -> pd.DataFrame:
    ids = sorted(traits)
    frame = {"id": ids, "identifier": [f"user-{i}" for i in ids]}
    if keys is not None:
        frame["key"] = [keys.get(i) for i in ids]
    return pd.DataFrame(frame)


def both_answers(
    traits: dict[int, dict[str, Any]],
    segment_json: dict[str, Any],
    *,
    keys: dict[int, str] | None = None,
    tuning: EvaluationTuning | None = None,
) -> tuple[set[int], set[int]]:
    """(our members, flag-engine's members) of one segment."""
    identities = identities_frame(traits, keys)
    result = evaluate_environment(
        ENVIRONMENT, identities, traits_frame(traits), [segment_json], tuning or EvaluationTuning()
    )
    assert result.failures == {}
    contexts = identity_contexts(ENVIRONMENT, identities, traits)
    return set(result.segments[segment_json["key"]]), reference_members(contexts, segment_json)
