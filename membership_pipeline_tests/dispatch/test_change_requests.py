"""Detected changes → requests, as pure policy (no database): which environments, which
windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from membership_pipeline.dispatch.change_requests import LiveEnvironment, change_requests
from membership_pipeline.sources.change_feed import DetectedChanges, RowChanges, Watermarks

AS_OF = datetime(2026, 3, 1, tzinfo=UTC)
NOW = AS_OF + timedelta(days=10)
LIVE = [
    LiveEnvironment(id=1, api_key="a", project_id=10, organisation="o1"),
    LiveEnvironment(id=2, api_key="b", project_id=10, organisation="o1"),
    LiveEnvironment(id=3, api_key="c", project_id=20, organisation="o2"),
]
PUBLISHED = {"a": AS_OF, "b": AS_OF, "c": None}  # c was never backfilled


def detected(identities=None, traits=None, segments=None) -> DetectedChanges:
    return DetectedChanges(
        identities=identities or {},
        traits=traits or {},
        segment_projects=segments or {},
        watermarks=Watermarks(tables={}),
    )


def windows(changes: DetectedChanges) -> dict[str, tuple[datetime, datetime]]:
    requests = change_requests(changes, LIVE, PUBLISHED, NOW, max_attempts=3)
    assert all(r.reason.value == "change" and r.max_attempts == 3 for r in requests)
    return {r.environment: (r.window_start, r.window_end) for r in requests}


def test_unseen_rows_request_their_environment_up_to_their_latest_stamp():
    stamp = AS_OF - timedelta(days=1)  # created before the version's as_of: still never seen
    assert windows(detected(traits={1: RowChanges(unseen=5, latest_created=stamp)})) == {
        "a": (AS_OF, AS_OF)
    }
    later = AS_OF + timedelta(days=2)
    assert windows(detected(identities={2: RowChanges(3, later)})) == {"b": (AS_OF, later)}


def test_rows_seen_again_count_only_when_newer_than_the_version():
    older, newer = AS_OF - timedelta(hours=1), AS_OF + timedelta(hours=1)
    assert windows(detected(traits={1: RowChanges(unseen=0, latest_created=older)})) == {}
    assert windows(detected(traits={1: RowChanges(0, newer)})) == {"a": (AS_OF, newer)}
    assert windows(detected(traits={1: RowChanges(0, None)})) == {}


def test_a_segment_change_requests_every_published_environment_of_its_project():
    stamp = AS_OF + timedelta(days=3)
    assert windows(detected(segments={10: stamp, 20: stamp})) == {
        "a": (AS_OF, stamp),
        "b": (AS_OF, stamp),
    }  # c: never backfilled, discovery's job
    # A hard deletion moves no stamp: its window runs to now, a key of its own.
    assert windows(detected(segments={10: None}))["a"] == (AS_OF, NOW)


def test_environments_not_live_are_never_requested():
    assert windows(detected(traits={99: RowChanges(1, NOW)})) == {}


def test_a_segments_only_change_names_its_segments_and_any_row_change_makes_it_full():
    stamp = AS_OF + timedelta(days=3)
    only_segments = DetectedChanges(
        identities={},
        traits={2: RowChanges(unseen=1, latest_created=stamp)},
        segment_projects={10: stamp},
        watermarks=Watermarks(tables={}),
        segment_keys={10: ("4", "17")},
        segment_totals={10: 30},
    )
    requests = {r.environment: r for r in change_requests(only_segments, LIVE, PUBLISHED, NOW, 3)}
    assert (requests["a"].segments, requests["a"].segment_total) == (("4", "17"), 30)
    assert requests["a"].mode == "incremental"
    assert requests["b"].segments is None and requests["b"].mode == "full"  # a new trait too
