"""flag-engine as the reference evaluator: membership decided one identity at a time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from flag_engine.segments.evaluator import get_enriched_context, is_context_in_segment


def identity_contexts(
    environment: Mapping[str, str],
    identities: pd.DataFrame,
    traits_by_identity: Mapping[int, Mapping[str, Any]],
) -> dict[int, dict[str, Any]]:
    """Each identity's evaluation context, enriched as ``get_evaluation_result`` enriches it."""
    contexts = {}
    for row in identities.to_dict("records"):
        identity: dict[str, Any] = {
            "identifier": row["identifier"],
            "traits": dict(traits_by_identity.get(row["id"], {})),
        }
        key = row.get("key")
        if isinstance(key, str):  # pandas turns a missing key into NaN: leave it absent
            identity["key"] = key
        context = {"environment": dict(environment), "identity": identity}
        contexts[row["id"]] = get_enriched_context(context)  # type: ignore[arg-type]
    return contexts


def reference_members(
    contexts: Mapping[int, Mapping[str, Any]], segment: Mapping[str, Any]
) -> set[int]:
    return {
        identity_id
        for identity_id, context in contexts.items()
        if is_context_in_segment(context, segment)  # type: ignore[arg-type]
    }


def mismatches(
    contexts: Mapping[int, Mapping[str, Any]],
    segments: Sequence[Mapping[str, Any]],
    computed: Mapping[str, set[int]],
) -> list[tuple[str, int, bool]]:
    """(segment key, identity id, flag-engine's answer) wherever the bitmaps disagree."""
    found = []
    for segment in segments:
        expected = reference_members(contexts, segment)
        got = computed[str(segment["key"])]
        found.extend((str(segment["key"]), i, i in expected) for i in sorted(expected ^ got))
    return found
