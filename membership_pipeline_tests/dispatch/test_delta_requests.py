"""Delta requests (identities captured as changed) through the dispatcher: deltas merge into one
delta, a delta with a full request is a full backfill, a delta with segment edits is one delta
carrying them (full when most segments changed), deltas have a cap of their own, the mode
survives the durable queue and the run tags, deltas and edits wait out the short change cooldown
(not the 60 s one), and a capture process can dispatch only them, leaving full requests
queued."""

from __future__ import annotations

from datetime import datetime, timedelta

from membership_pipeline.dispatch.dispatcher import dispatch_tick
from membership_pipeline.dispatch.intake import RequestIntake
from membership_pipeline.dispatch.policy import Outcome, PolicySettings, WorldView, decide
from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.requests import BackfillRequest, Reason
from membership_pipeline.dispatch.run_tags import request_from_tags, request_tags
from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.storage import Claim
from membership_pipeline_tests.dispatch.test_segment_requests import NOW, launched, request

ENV = EnvironmentInfo(1, "env", "Production", 1, 1, "Acme", False)


def delta(minutes: int, now: datetime = NOW) -> BackfillRequest:
    start = now - timedelta(minutes=minutes)
    return BackfillRequest.new(
        organisation="o",
        environment="env",
        window_start=start,
        window_end=start + timedelta(minutes=1),
        reason=Reason.CHANGE,
        created_at=start,
        delta=True,
    )


def test_deltas_merge_into_one_delta():
    published, result = launched(delta(10), delta(9), delta(8))
    assert published.request.delta and published.mode == "delta"
    assert published.mode_detail == "delta: the identities captured as changed, on every segment"
    assert sum(d.outcome is Outcome.COALESCED for d in result.decisions) == 2


def test_a_delta_with_a_full_request_is_full():
    published, result = launched(delta(10), delta(8), request(9, None))
    assert published.mode == "full" and not published.request.delta
    assert published.request.segments is None
    assert sum(d.outcome is Outcome.COALESCED for d in result.decisions) == 2


def test_a_delta_with_segment_edits_is_one_delta_that_carries_them(store, clock):
    """One backfill does both: the edited segments on every identity and the captured
    identities on every segment, in one version; it waits out the short change cooldown (a
    full backfill would be held by the 60 s one while the writes keep coming)."""
    queue = DatabaseQueue(store.database)
    at = clock.now
    queue.enqueue(
        [delta(3, at), request(2, ("3",), now=at), delta(1, at), request(0, ("5",), now=at)]
    )
    first = dispatch_tick(queue, store, PolicySettings(), clock.now)
    [launched] = [d for d in first.decisions if d.outcome is Outcome.PUBLISHED]
    assert (launched.mode, launched.request.delta, launched.request.segments) == (
        "delta", True, ("3", "5")
    )  # fmt: skip
    assert launched.mode_detail == (
        "delta: the identities captured as changed, on every segment, and 2 of 20 edited "
        "segments on every identity"
    )
    assert sum(d.outcome is Outcome.COALESCED for d in first.decisions) == 3
    assert queue.pending() == []
    assert [org for org, _ in queue.recent_launches(clock.now, delta=True)] == ["o"]
    # The edits survive the run's tags (a retry carries them).
    tags = request_tags(launched.request) | {"dagster/partition": "env"}
    again = request_from_tags(tags, clock.now)
    assert (again.delta, again.segments, again.mode) == (True, ("3", "5"), "delta")


def test_a_delta_with_most_segments_edited_is_full():
    published, _ = launched(delta(3), request(2, tuple(str(k) for k in range(11))))
    assert (published.mode, published.request.delta, published.request.segments) == (
        "full", False, None
    )  # fmt: skip
    assert published.mode_detail == "full: 11 of 20 segments changed (more than 50%)"


def test_deltas_count_against_their_own_cap():
    def world(full: int, deltas: int) -> WorldView:
        return WorldView(
            {}, {}, [("o", NOW - timedelta(seconds=5))] * full,
            [("o", NOW - timedelta(seconds=5))] * deltas,
        )  # fmt: skip

    policy = PolicySettings(
        launches_per_organisation_per_minute=2, delta_launches_per_organisation_per_minute=3
    )
    [by_full_cap] = decide([delta(0)], world(full=2, deltas=2), policy, NOW).decisions
    assert by_full_cap.outcome is Outcome.PUBLISHED  # the full backfills' cap is not the deltas'
    [capped] = decide([delta(0)], world(full=0, deltas=3), policy, NOW).decisions
    assert (capped.outcome, capped.detail) == (
        Outcome.RATE_LIMITED,
        "organisation o: cap 3/min (deltas)",
    )
    [full] = decide([request(0, None)], world(full=2, deltas=0), policy, NOW).decisions
    assert full.outcome is Outcome.RATE_LIMITED
    denied = PolicySettings(organisation_caps={"o": 0})
    [deny_listed] = decide([delta(0)], world(0, 0), denied, NOW).decisions
    assert deny_listed.outcome is Outcome.RATE_LIMITED


def test_the_launch_log_counts_deltas_apart(store, clock):
    queue = DatabaseQueue(store.database)
    queue.enqueue([delta(0, clock.now)])
    assert [
        d.outcome for d in dispatch_tick(queue, store, PolicySettings(), clock.now).decisions
    ] == [Outcome.PUBLISHED]
    assert queue.recent_launches(clock.now) == []
    assert [org for org, _ in queue.recent_launches(clock.now, delta=True)] == ["o"]


def test_the_mode_survives_the_queue_and_the_run_tags(store, clock):
    queue = DatabaseQueue(store.database)
    queue.enqueue([delta(1, clock.now)])
    [kept] = queue.pending()
    assert kept.delta and kept.mode == "delta"
    tags = request_tags(kept) | {"dagster/partition": kept.environment}  # the run's partition
    assert request_from_tags(tags, clock.now).delta


def test_captured_changes_make_a_delta_an_edit_or_a_full_request():
    intake = RequestIntake()
    other = EnvironmentInfo(2, "other", "Staging", 1, 1, "Acme", False)
    third = EnvironmentInfo(3, "third", "Dev", 2, 1, "Acme", False)
    made = intake.captured([ENV], [ENV, other], [third], {"env": NOW}, NOW)
    modes = sorted((r.environment, r.mode) for r in made)
    assert modes == [("env", "delta"), ("env", "incremental"), ("other", "incremental"),
                     ("third", "full")]  # fmt: skip


def test_deltas_wait_out_the_change_cooldown_not_the_full_one(store, clock):
    queue = DatabaseQueue(store.database)
    held = store.claim("env", owner="earlier", force=True)
    assert isinstance(held, Claim)
    store.fail(held, "a backfill just ended")
    queue.enqueue([delta(0, clock.now)])
    first = dispatch_tick(queue, store, PolicySettings(), clock.now)
    assert [d.outcome for d in first.decisions] == [Outcome.DEFERRED_COOLDOWN]
    clock.advance(store.change_cooldown.total_seconds() + 1)
    second = dispatch_tick(queue, store, PolicySettings(), clock.now)
    assert [d.outcome for d in second.decisions] == [Outcome.PUBLISHED]  # well within 60 s
    queue.enqueue([request(0, None, now=clock.now)])  # a full backfill waits the full minute
    third = dispatch_tick(queue, store, PolicySettings(), clock.now)
    assert [d.outcome for d in third.decisions] == [Outcome.DEFERRED_COOLDOWN]


def test_a_capture_process_dispatches_only_deltas_and_edits(store, clock):
    queue = DatabaseQueue(store.database)
    full = request(5, None, now=clock.now)
    full = BackfillRequest.new(
        organisation="o", environment="big", window_start=full.window_start,
        window_end=full.window_end, reason=Reason.CHANGE, created_at=clock.now,
    )  # fmt: skip
    waiting = delta(0, clock.now)
    waiting = BackfillRequest.new(
        organisation="o", environment="big", window_start=waiting.window_start,
        window_end=waiting.window_end, reason=Reason.CHANGE, created_at=clock.now, delta=True,
    )  # fmt: skip
    queue.enqueue([delta(0, clock.now), full, waiting])
    result = dispatch_tick(
        queue, store, PolicySettings(), clock.now, eligible=lambda r: r.mode != "full"
    )
    assert [(d.environment, d.outcome) for d in result.decisions] == [("env", Outcome.PUBLISHED)]
    # The full request is left for the daemon, and "big"'s delta waits for it (it would build
    # on the version the full backfill replaces).
    assert sorted(r.mode for r in queue.pending()) == ["delta", "full"]
