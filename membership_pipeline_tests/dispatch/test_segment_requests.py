"""Segments-only requests through the dispatcher: coalescing merges their segment sets, a full
request makes the merge full, most of the environment escalates to full; every decision says
its mode and why, in the durable queue as in memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from membership_pipeline.dispatch.dispatcher import dispatch_tick
from membership_pipeline.dispatch.policy import Outcome, PolicySettings, WorldView, decide
from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.requests import BackfillRequest, Reason

NOW = datetime(2026, 5, 1, tzinfo=UTC)
QUIET = WorldView(guarded={}, dedup_locks={}, recent_launches=[])


def request(
    minutes: int, segments: tuple[str, ...] | None, total: int | None = 20, now: datetime = NOW
):
    start = now - timedelta(minutes=minutes)
    return BackfillRequest.new(
        organisation="o",
        environment="env",
        window_start=start,
        window_end=start + timedelta(minutes=1),
        reason=Reason.CHANGE,
        created_at=now - timedelta(minutes=minutes),
        segments=segments,
        segment_total=total,
    )


def launched(*requests: BackfillRequest, share: float = 0.5):
    result = decide(requests, QUIET, PolicySettings(incremental_max_share=share), NOW)
    [published] = [d for d in result.decisions if d.outcome is Outcome.PUBLISHED]
    return published, result


def test_coalesced_segment_sets_merge():
    published, result = launched(request(10, ("3",)), request(9, ("12", "3")), request(8, ("5",)))
    assert published.request.segments == ("3", "5", "12")
    assert published.mode == "incremental"
    assert published.mode_detail == "incremental: 3 segments changed of 20"
    coalesced = [d for d in result.decisions if d.outcome is Outcome.COALESCED]
    assert len(coalesced) == 2 and all(d.mode == "incremental" for d in coalesced)


def test_a_full_request_makes_the_merge_full():
    published, _ = launched(request(10, ("3",)), request(9, None))
    assert published.request.segments is None and published.mode == "full"
    assert published.mode_detail.startswith("full: identities, traits")


def test_most_of_the_environment_escalates_to_full():
    many = tuple(str(k) for k in range(11))
    published, _ = launched(request(10, many[:6]), request(9, many[6:]))
    assert published.mode == "full"
    assert published.mode_detail == "full: 11 of 20 segments changed (more than 50%)"
    kept, _ = launched(request(10, many[:6]), request(9, many[6:]), share=0.6)
    assert kept.mode == "incremental"


def test_segment_sets_survive_the_durable_queue_and_are_reported(store, clock):
    queue = DatabaseQueue(store.database)
    now = clock.now
    queue.enqueue([request(10, ("3",), now=now), request(9, ("7",), now=now),
                   request(200, None, None, now=now)])  # fmt: skip
    assert sorted((r.segments or ("full",)) for r in queue.pending()) == [("3",), ("7",), ("full",)]
    with structlog.testing.capture_logs() as events:
        result = dispatch_tick(queue, store, PolicySettings(), now)
    by_outcome = {d.outcome: d for d in result.decisions}
    # The older (full) window launches; the merged segments-only one waits, its set intact.
    assert by_outcome[Outcome.PUBLISHED].mode == "full"
    assert by_outcome[Outcome.DEFERRED_RUNNING].request.segments == ("3", "7")
    assert [r.segments for r in queue.pending()] == [("3", "7")]
    logged = {e["event"]: e for e in events}
    assert logged["segment_membership.dispatch.published"]["mode"] == "full"
    deferred = logged["segment_membership.dispatch.deferred_running"]
    assert (deferred["mode"], deferred["segments"]) == ("incremental", 2)
    assert deferred["mode_detail"] == "incremental: 2 segments changed of 20"
