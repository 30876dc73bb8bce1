"""The public result: bitmaps per segment, shared atoms, events, and independence of its parts."""

from __future__ import annotations

import pandas as pd
from pyroaring import BitMap
from structlog.testing import capture_logs

from membership_pipeline.evaluation import engine, evaluate_environment, traits_frame
from membership_pipeline_tests.evaluation.membership_helpers import ENVIRONMENT, condition, segment


def test_result_bitmaps_atoms_and_completion_event() -> None:
    identities = pd.DataFrame({"id": [5, 1, 4_000_000_000], "identifier": ["e", "a", "z"]})
    traits = traits_frame({1: {"plan": "pro"}, 5: {"plan": "free"}, 4_000_000_000: {"plan": "pro"}})
    pro = condition("plan", "EQUAL", "pro")
    segments = [
        segment(pro, key="pro"),
        segment(pro, condition("plan", "IS_SET", None), key="pro-set"),
        segment(key="nobody", rule_type="NONE"),
    ]
    with capture_logs() as events:
        result = evaluate_environment(ENVIRONMENT, identities, traits, segments)
    assert result.segments["pro"] == BitMap([1, 4_000_000_000])
    assert result.segments["pro-set"] == BitMap([1, 4_000_000_000])
    assert result.segments["nobody"] == BitMap([1, 5, 4_000_000_000])  # NONE of no conditions: all
    assert result.universe == BitMap([1, 5, 4_000_000_000])
    assert [atom.label for atom in result.shared_atoms] == ["plan EQUAL 'pro'"]
    assert result.segment_names["pro"] == "segment pro"
    completed = [e for e in events if e["event"] == "segment_membership.evaluation.completed"]
    assert completed[0]["identities"] == 3 and completed[0]["segments"] == 3


def test_progress_events_are_paced_by_time_not_by_segment_count(monkeypatch) -> None:
    """A quick evaluation (a delta's) writes no progress event into the run's log; a slow one
    says how far it got, at most every ``PROGRESS_SECONDS``."""
    identities = pd.DataFrame({"id": [1, 2], "identifier": ["a", "b"]})
    traits = traits_frame({1: {"plan": "pro"}})
    segments = [segment(condition("plan", "EQUAL", f"p{n}"), key=f"s{n}") for n in range(60)]
    with capture_logs() as quick:
        evaluate_environment(ENVIRONMENT, identities, traits, segments)
    assert not [e for e in quick if e["event"] == "segment_membership.evaluation.progress"]
    monkeypatch.setattr(engine, "PROGRESS_SECONDS", 0.0)
    with capture_logs() as slow:
        evaluate_environment(ENVIRONMENT, identities, traits, segments)
    progress = [e for e in slow if e["event"] == "segment_membership.evaluation.progress"]
    assert [e["segments_done"] for e in progress] == list(range(60))
    assert {e["segments_total"] for e in progress} == {60}


def test_result_bitmaps_do_not_alias_each_other() -> None:
    identities = pd.DataFrame({"id": [1, 2], "identifier": ["a", "b"]})
    traits = traits_frame({1: {"plan": "pro"}})
    pro = condition("plan", "EQUAL", "pro")
    result = evaluate_environment(
        ENVIRONMENT, identities, traits, [segment(pro, key="a"), segment(pro, key="b")]
    )
    result.segments["a"].add(2)
    assert result.segments["b"] == BitMap([1])
    assert next(iter(result.atoms.values())) == BitMap([1])


def test_no_segments_and_no_traits() -> None:
    identities = pd.DataFrame({"id": [3], "identifier": ["c"]})
    result = evaluate_environment(ENVIRONMENT, identities, traits_frame({}), [])
    assert result.segments == {} and result.failures == {} and list(result.universe) == [3]


def test_failures_and_shared_atoms_depend_on_definitions_not_on_data():
    """What makes shards exact: a segment with an unusable property fails even where no identity
    reaches that condition, and an atom shared by segments is stored whole even where every
    segment's scope was empty before it."""
    identities = pd.DataFrame({"id": [1, 2], "identifier": ["a", "b"]})
    traits = traits_frame({1: {"plan": "free"}, 2: {"plan": "free"}})
    nobody = {"property": "plan", "operator": "EQUAL", "value": "pro"}
    country = {"property": "country", "operator": "EQUAL", "value": "US"}
    flags = {"property": "$.flags.beta", "operator": "EQUAL", "value": "true"}
    segments = [
        {"key": key, "name": key, "rules": [{"type": "ALL", "conditions": [nobody, country]}]}
        for key in ("1", "2")
    ] + [{"key": "3", "name": "3", "rules": [{"type": "ALL", "conditions": [nobody, flags]}]}]
    result = evaluate_environment({"key": "e", "name": "e"}, identities, traits, segments)
    assert set(result.failures) == {"3"}
    assert result.failures["3"].reason_code == "unsupported_property"
    shared = {atom.label: members for atom, members in result.shared_atoms.items()}
    assert shared == {"plan EQUAL 'pro'": BitMap(), "country EQUAL 'US'": BitMap()}
