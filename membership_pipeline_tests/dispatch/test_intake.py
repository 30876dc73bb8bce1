"""The intake, as pure policy (no database): detected changes → requests (which environments,
which windows), and the requests of every other path (discovery, the schedule, an operator, a
retry)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from membership_pipeline.dispatch.intake import EPOCH, RequestIntake
from membership_pipeline.dispatch.requests import Reason
from membership_pipeline.model.changes import DetectedChanges, RowChanges, Watermarks
from membership_pipeline.model.environment import EnvironmentInfo

AS_OF = datetime(2026, 3, 1, tzinfo=UTC)
NOW = AS_OF + timedelta(days=10)


def live(id: int, api_key: str, project_id: int, organisation_id: int) -> EnvironmentInfo:
    return EnvironmentInfo(
        id=id,
        api_key=api_key,
        name=api_key,
        project_id=project_id,
        organisation_id=organisation_id,
        organisation_name=f"Org {organisation_id}",
        use_composite_hash_key=False,
    )


LIVE = [live(1, "a", 10, 1), live(2, "b", 10, 1), live(3, "c", 20, 2)]
INTAKE = RequestIntake(max_attempts=3)
PUBLISHED = {"a": AS_OF, "b": AS_OF, "c": None}  # c was never backfilled


def detected(identities=None, traits=None, segments=None) -> DetectedChanges:
    return DetectedChanges(
        identities=identities or {},
        traits=traits or {},
        segment_projects=segments or {},
        watermarks=Watermarks(tables={}),
    )


def windows(changes: DetectedChanges) -> dict[str, tuple[datetime, datetime]]:
    requests = INTAKE.changes(changes, LIVE, PUBLISHED, NOW)
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
    requests = {r.environment: r for r in INTAKE.changes(only_segments, LIVE, PUBLISHED, NOW)}
    assert (requests["a"].segments, requests["a"].segment_total) == (("4", "17"), 30)
    assert requests["a"].mode == "incremental"
    assert requests["b"].segments is None and requests["b"].mode == "full"  # a new trait too
    assert requests["a"].organisation == "1"  # the organisation's id, as the caps key it


def test_every_other_path_builds_its_requests_here():
    organisations = {"a": "1", "b": "1"}
    [new] = INTAKE.new_environments(organisations, ["b"], NOW)
    assert (new.environment, new.organisation, new.reason) == ("b", "1", Reason.NEW_ENVIRONMENT)
    assert (new.window_start, new.window_end, new.max_attempts) == (EPOCH, NOW, 3)
    refreshed = INTAKE.refresh(organisations, ["a", "gone"], NOW)  # "gone": no longer live
    assert [(r.environment, r.reason, r.window_start) for r in refreshed] == [
        ("a", Reason.SCHEDULE, NOW)
    ]
    manual = INTAKE.manual("1", "a", NOW, force=True, segments=("4",), segment_total=9)
    assert (manual.reason, manual.force, manual.mode, manual.segment_total) == (
        Reason.MANUAL,
        True,
        "incremental",
        9,
    )
    retry = INTAKE.retry(manual, NOW + timedelta(minutes=1))
    assert (retry.reason, retry.attempt, retry.segments) == (Reason.RETRY, 2, ("4",))
    assert retry.dedup_key == f"{manual.dedup_key}:attempt2"
