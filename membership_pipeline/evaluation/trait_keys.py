"""Which trait keys a set of segments can read: the only traits a backfill needs to read.

No compiled kernels here, so the source can import it cheaply."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from membership_pipeline.evaluation.errors import SegmentDefinitionError
from membership_pipeline.evaluation.properties import (
    PropertyNotSupported,
    context_path,
    trait_keys_read_by,
)
from membership_pipeline.evaluation.segment_model import (
    Condition,
    Operator,
    Segment,
    parse_segment,
)


def referenced_trait_keys(segments: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Every trait key the segments' conditions can read. Traits of other keys cannot change
    any membership, so a source need not read them (a segment that fails to parse reads none)."""
    parsed = []
    for raw in segments:
        try:
            parsed.append(parse_segment(raw))
        except SegmentDefinitionError:
            continue
    return trait_keys_of(parsed)


def trait_keys_of(parsed: Iterable[Segment]) -> frozenset[str]:
    return frozenset(
        key
        for segment in parsed
        for condition in conditions_of(segment)
        if condition.property
        for key in trait_keys_read_by(condition.property)
    )


def conditions_of(segment: Segment) -> Iterator[Condition]:
    stack = list(segment.rules)
    while stack:
        rule = stack.pop()
        stack.extend(rule.rules)
        yield from rule.conditions


def reads_identifiers(segments: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any of the segments can read an identity's identifier: a percentage split (it
    hashes the identity's key, built from the identifier in composite-key environments) or a
    ``$.identity.identifier`` / ``$.identity.key`` property. When none can, every membership
    is the same whatever the identifiers, so a source need not read them."""
    for raw in segments:
        try:
            segment = parse_segment(raw)
        except SegmentDefinitionError:
            continue  # fails from its definition alone, reading nothing
        for condition in conditions_of(segment):
            if condition.operator is Operator.PERCENTAGE_SPLIT:
                return True
            if condition.property and _reads_identity_field(condition.property):
                return True
    return False


def _reads_identity_field(prop: str) -> bool:
    try:
        names = context_path(prop)
    except PropertyNotSupported:
        return False  # the segment fails from the property alone
    if names is None:
        return False  # a trait key
    match names:
        case ["environment", *_] | ["identity", "traits", str()]:
            return False
        case _:
            return True  # the identifier, the key, or a path this does not know: to be safe
