"""The audit before publish: a sample of identities re-evaluated by flag-engine, Flagsmith's own
evaluator, one identity at a time, and compared with the bitmaps.

flag-engine is far too slow to compute membership (it decides one identity and one segment per
call); on a few hundred identities it is the reference that catches an engine bug before its
bitmaps are published. Where flag-engine raises (MODULO by zero, IN with a null value) the
engine's documented answer is "no match", and the audit expects that.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from flag_engine.segments.evaluator import get_enriched_context, is_context_in_segment
from pyroaring import BitMap

from membership_pipeline.evaluation.environment_data import VALUE_COLUMN_BY_TYPE


@dataclass(frozen=True)
class AuditReport:
    identities: int  # sampled
    pairs: int  # (identity, segment) decisions compared
    mismatches: list[tuple[str, int, bool]] = field(default_factory=list)  # segment, id, reference
    unlisted_mismatches: int = 0  # counted but not listed (combined reports keep a few each)

    @property
    def mismatch_count(self) -> int:
        return len(self.mismatches) + self.unlisted_mismatches

    @property
    def passed(self) -> bool:
        return self.mismatch_count == 0

    def describe(self) -> str:
        if self.passed:
            return (
                f"{self.pairs:,} decisions on {self.identities:,} identities agree with flag-engine"
            )
        shown = ", ".join(
            f"segment {segment} identity {identity} (flag-engine: {'in' if expected else 'out'})"
            for segment, identity, expected in self.mismatches[:5]
        )
        disagree = f"{self.mismatch_count:,} of {self.pairs:,} decisions disagree with flag-engine"
        return f"{disagree}: {shown}"


def audit_against_flag_engine(
    environment: Mapping[str, Any],
    identities: pd.DataFrame,
    traits: pd.DataFrame,
    segments: Iterable[Mapping[str, Any]],
    bitmaps: Mapping[str, BitMap],
    *,
    sample_size: int,
    seed: int = 0,
) -> AuditReport:
    """Compare ``bitmaps`` (segment key → members) with flag-engine on ``sample_size`` identities
    drawn at random; segments without a bitmap (failed ones) are not audited."""
    rng = np.random.default_rng(seed)
    rows = np.sort(
        rng.choice(len(identities), size=min(sample_size, len(identities)), replace=False)
    )
    chosen = identities.iloc[rows]
    contexts = _contexts(environment, chosen, traits)
    audited = [s for s in segments if str(s["key"]) in bitmaps]
    mismatches = []
    for segment in audited:
        members = bitmaps[str(segment["key"])]
        for identity_id, context in contexts:
            try:
                expected = is_context_in_segment(context, segment)  # type: ignore[arg-type]
            except (ZeroDivisionError, TypeError, ValueError):
                expected = False
            if expected != (identity_id in members):
                mismatches.append((str(segment["key"]), identity_id, expected))
    return AuditReport(len(contexts), len(contexts) * len(audited), mismatches)


def _contexts(
    environment: Mapping[str, Any], chosen: pd.DataFrame, traits: pd.DataFrame
) -> list[tuple[int, Any]]:
    wanted = traits[traits["identity_id"].isin(chosen["id"])]
    by_identity: dict[int, dict[str, Any]] = collections.defaultdict(dict)
    for row in wanted.itertuples(index=False):
        value = getattr(row, VALUE_COLUMN_BY_TYPE[row.value_type])
        by_identity[int(row.identity_id)][row.trait_key] = (
            value.item() if hasattr(value, "item") else value
        )
    contexts = []
    for identity in chosen.to_dict("records"):
        context_identity: dict[str, Any] = {
            "identifier": identity["identifier"],
            "traits": by_identity.get(int(identity["id"]), {}),
        }
        key = identity.get("key")
        if isinstance(key, str) and key:  # absent (NaN) or empty: flag-engine's composite key
            context_identity["key"] = key
        context = {"environment": dict(environment), "identity": context_identity}
        contexts.append((int(identity["id"]), get_enriched_context(context)))  # type: ignore[arg-type]
    return contexts
