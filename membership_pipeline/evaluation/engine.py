"""The public entry point: one environment's identities, traits and segments → bitmaps."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pyroaring import BitMap

from membership_pipeline.evaluation.atoms import Atom, AtomEvaluator
from membership_pipeline.evaluation.bitmaps import bitmap_of
from membership_pipeline.evaluation.environment_data import EnvironmentData, EnvironmentRef
from membership_pipeline.evaluation.errors import (
    DuplicateSegmentKey,
    SegmentDefinitionError,
    UnsupportedProperty,
)
from membership_pipeline.evaluation.properties import PropertyNotSupported, context_path
from membership_pipeline.evaluation.rule_composition import SegmentComposer
from membership_pipeline.evaluation.segment_model import Condition, Segment, parse_segment
from membership_pipeline.evaluation.trait_keys import conditions_of, trait_keys_of
from membership_pipeline.evaluation.tuning import DEFAULT_TUNING, EvaluationTuning
from membership_pipeline.structured_logging import get_logger

log = get_logger("evaluation")
# A progress event at most this often: a long evaluation shows it is moving, and a short one
# (a delta's, in a tenth of a second) writes none (each is an event in Dagster's log).
PROGRESS_SECONDS = 5.0


@dataclass
class MembershipResult:
    """Bitmaps of one environment. ``segments`` holds every segment that could be evaluated;
    ``failures`` says, for each one that could not, why (the others are unaffected)."""

    environment_key: str
    universe: BitMap
    segments: dict[str, BitMap]
    segment_names: dict[str, str]
    failures: dict[str, SegmentDefinitionError]
    atoms: dict[Atom, BitMap]
    atom_usage: Counter[Atom]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def shared_atoms(self) -> dict[Atom, BitMap]:
        """Atoms used by more than one segment: the ones worth keeping as bitmaps of their own."""
        return {atom: self.atoms[atom] for atom, uses in self.atom_usage.items() if uses > 1}


def evaluate_environment(
    environment: Mapping[str, Any],
    identities: pd.DataFrame,
    traits: pd.DataFrame,
    segments: Iterable[Mapping[str, Any]],
    tuning: EvaluationTuning = DEFAULT_TUNING,
) -> MembershipResult:
    """Evaluate every segment of one environment into a pyroaring ``BitMap`` of identity ids.

    ``environment`` is flag-engine's ``EnvironmentContext`` (``key``, ``name``); ``identities`` and
    ``traits`` are frames as described in :mod:`membership_pipeline.evaluation.environment_data`;
    ``segments`` are flag-engine ``SegmentContext`` mappings (``key``, ``name``, ``rules``).

    Membership equals flag-engine's ``is_context_in_segment`` for each identity's evaluation
    context. Raises ``InvalidEnvironmentInput`` when the identities or traits are unusable;
    a segment that cannot be evaluated is reported in ``failures`` instead.
    """
    started = time.perf_counter()
    ref = EnvironmentRef.from_mapping(environment)
    parsed, failures = _parse_all(segments)
    data = EnvironmentData(ref, identities, traits, trait_keys_of(parsed))
    prepared = time.perf_counter()

    atoms = AtomEvaluator(
        data, tuning, planned=(atom for segment in parsed for _, atom in _atoms_of(segment))
    )
    universe = bitmap_of(data.ids)
    usage: Counter[Atom] = Counter()
    bitmaps: dict[str, BitMap] = {}
    last_progress = prepared
    for done, segment in enumerate(parsed, start=1):
        if time.perf_counter() - last_progress >= PROGRESS_SECONDS:
            last_progress = time.perf_counter()
            log.info(
                "segment_membership.evaluation.progress",
                environment=ref.key,
                segments_done=done - 1,
                segments_total=len(parsed),
                seconds=round(time.perf_counter() - prepared, 2),
            )
        try:
            _check_properties(segment)
            bitmaps[segment.key] = SegmentComposer(segment, atoms, universe).bitmap()
        except SegmentDefinitionError as exc:
            failures[segment.key] = exc
            continue
        usage.update({atom for _, atom in _atoms_of(segment)})
    for atom, uses in usage.items():
        if uses > 1:  # stored as a bitmap of its own: whole, even where a scope skipped it
            atoms.bitmap(atom)
    evaluated = time.perf_counter()

    for key, error in failures.items():
        log.warning(
            "segment_membership.evaluation.segment_failed",
            environment=ref.key,
            segment=key,
            reason=error.reason_code,
            location=error.location,
            error=error.message,
        )
    timings = {"prepare_seconds": prepared - started, "evaluate_seconds": evaluated - prepared}
    log.info(
        "segment_membership.evaluation.completed",
        environment=ref.key,
        identities=data.size,
        segments=len(bitmaps),
        failed_segments=len(failures),
        atoms=len(atoms.bitmaps),
        scoped_atom_evaluations=atoms.scoped_evaluations,
        **{name: round(value, 4) for name, value in timings.items()},
    )
    return MembershipResult(
        environment_key=ref.key,
        universe=universe,
        segments=bitmaps,
        segment_names={segment.key: segment.name for segment in parsed},
        failures=failures,
        atoms=atoms.bitmaps,
        atom_usage=usage,
        timings=timings,
    )


def _parse_all(
    raw_segments: Iterable[Mapping[str, Any]],
) -> tuple[list[Segment], dict[str, SegmentDefinitionError]]:
    parsed: list[Segment] = []
    failures: dict[str, SegmentDefinitionError] = {}
    seen: set[str] = set()
    for raw in raw_segments:
        try:
            segment = parse_segment(raw)
        except SegmentDefinitionError as exc:
            failures[exc.segment_key] = exc
            continue
        if segment.key in seen:
            failures[segment.key] = DuplicateSegmentKey(
                segment.key, "key", "two segments of the environment share this key"
            )
            continue
        seen.add(segment.key)
        parsed.append(segment)
    duplicated = set(failures) & seen
    return [s for s in parsed if s.key not in duplicated], failures


def _atoms_of(segment: Segment) -> Iterable[tuple[Condition, Atom]]:
    return ((condition, Atom.of(condition, segment.key)) for condition in conditions_of(segment))


def _check_properties(segment: Segment) -> None:
    """A property that cannot be evaluated fails its segment whether or not any identity reaches
    the condition: the verdict depends on the definition alone, never on the data."""
    for condition, _ in _atoms_of(segment):
        if condition.property:
            try:
                context_path(condition.property)
            except PropertyNotSupported as exc:
                raise UnsupportedProperty(segment.key, condition.location, str(exc)) from None
