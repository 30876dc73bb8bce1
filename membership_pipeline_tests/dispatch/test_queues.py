"""The durable queue (each backend) and the in-memory one behave alike over several ticks."""

from __future__ import annotations

from datetime import timedelta

from pyroaring import BitMap

from membership_pipeline.dispatch.dispatcher import dispatch_tick
from membership_pipeline.dispatch.policy import PolicySettings
from membership_pipeline.dispatch.queue import DatabaseQueue, InMemoryQueue
from membership_pipeline.dispatch.requests import BackfillRequest, Reason
from membership_pipeline_tests.storage.conftest import backfill

SETTINGS = PolicySettings(launches_per_organisation_per_minute=1, dedup_ttl=timedelta(minutes=10))


def _scenario(store, clock, queue):
    """Three ticks; returns each tick's (job id → outcome)."""
    now = clock.now

    def request(env: str, org: str, minutes: int, age: int, reason: Reason = Reason.CHANGE):
        start = now - timedelta(minutes=minutes)
        return BackfillRequest.new(
            organisation=org, environment=env, window_start=start,
            window_end=start + timedelta(minutes=1), reason=reason,
            created_at=now - timedelta(minutes=age),
        )  # fmt: skip

    first = [request("a", "o1", 30, 3), request("a", "o1", 28, 2), request("b", "o1", 10, 1),
             request("c", "o2", 5, 0), request("d", "o2", 5, 0, Reason.MANUAL)]  # fmt: skip
    queue.enqueue(first)
    ticks = [dispatch_tick(queue, store, SETTINGS, clock.now)]
    clock.advance(61)  # the rate window has passed: one more per organisation
    ticks.append(dispatch_tick(queue, store, SETTINGS, clock.now))
    queue.enqueue([first[0]])  # the same request again: its dedup key is locked
    clock.advance(61)
    ticks.append(dispatch_tick(queue, store, SETTINGS, clock.now))
    return [{d.job_id: d.outcome.value for d in t.decisions} for t in ticks], first


def test_durable_and_in_memory_queues_decide_alike(store, clock):
    backfill(store, "c", {"s": BitMap([1])})  # c: just backfilled, in its cooldown at first
    durable, first = _scenario(store, clock, DatabaseQueue(store.database))
    a1, a2, b, c, d = (r.job_id for r in first)
    assert durable[0] == {
        a1: "published", a2: "coalesced", b: "rate-limited", c: "deferred-cooldown",
        d: "published",
    }  # fmt: skip
    assert durable[1] == {b: "published", c: "published"}
    assert durable[2] == {a1: "dedup-suppressed"}
    assert DatabaseQueue(store.database).pending() == []

    clock.advance(-122)
    in_memory, _ = _scenario(store, clock, InMemoryQueue())
    assert [sorted(t.values()) for t in in_memory] == [sorted(t.values()) for t in durable]
