"""Which trait keys a set of segments can read: the only traits a backfill needs to read.

No compiled kernels here, so the source can import it cheaply."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from membership_pipeline.evaluation.errors import SegmentDefinitionError
from membership_pipeline.evaluation.properties import trait_keys_read_by
from membership_pipeline.evaluation.segment_model import Condition, Segment, parse_segment


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
