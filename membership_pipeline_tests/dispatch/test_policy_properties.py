"""Properties of the dispatch policy (Hypothesis): nothing lost, order-independent coalescing,
no two launches of an environment within its cooldown, no organisation over its cap."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from membership_pipeline.dispatch.policy import (
    RATE_WINDOW,
    Outcome,
    PolicySettings,
    WorldView,
    decide,
)
from membership_pipeline.dispatch.requests import BackfillRequest, Reason

T0 = datetime(2026, 11, 23, tzinfo=UTC)
ENVIRONMENTS = {f"env{i}": f"org{i % 3}" for i in range(6)}
COOLDOWN = timedelta(seconds=60)
TICK = timedelta(seconds=10)


@st.composite
def requests(draw, at: datetime = T0) -> BackfillRequest:
    environment = draw(st.sampled_from(sorted(ENVIRONMENTS)))
    start = at - timedelta(minutes=draw(st.integers(0, 120)))
    return BackfillRequest.new(
        organisation=ENVIRONMENTS[environment],
        environment=environment,
        window_start=start,
        window_end=start + timedelta(minutes=draw(st.integers(0, 30))),
        reason=draw(st.sampled_from(list(Reason))),
        created_at=at - timedelta(minutes=draw(st.integers(0, 60 * 30))),
    )


POLICY = PolicySettings(
    coalesce_window=timedelta(minutes=5),
    launches_per_organisation_per_minute=2,
    organisation_caps={"org2": 0},  # deny-listed
    max_age=timedelta(hours=24),
)
EMPTY_WORLD = WorldView(guarded={}, dedup_locks={}, recent_launches=[])


@given(st.lists(requests(), max_size=40))
@settings(max_examples=200, deadline=None)
def test_every_request_gets_exactly_one_decision(pending):
    result = decide(pending, EMPTY_WORLD, POLICY, T0)
    assert sorted(d.job_id for d in result.decisions) == sorted(r.job_id for r in pending)
    by_job = {d.job_id: d for d in result.decisions}
    for decision in result.decisions:
        if decision.outcome is Outcome.COALESCED:
            keeper = by_job[decision.into]
            assert keeper.outcome is not Outcome.COALESCED
            assert decision.job_id in keeper.request.coalesced
            assert keeper.request.window_start <= decision.request.window_start
    for decision in result.decisions:
        if decision.outcome is Outcome.DROPPED_STALE:
            assert T0 - decision.request.created_at > POLICY.max_age


@given(st.lists(requests(), max_size=40), st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_coalescing_does_not_depend_on_order(pending, rng):
    def outcome(requests_in_some_order):
        result = decide(requests_in_some_order, EMPTY_WORLD, POLICY, T0)
        return {
            d.job_id: (
                d.outcome,
                d.into,
                d.request.window_start,
                d.request.window_end,
                d.request.reason,
            )
            for d in result.decisions
        }

    shuffled = list(pending)
    rng.shuffle(shuffled)
    assert outcome(pending) == outcome(shuffled)


@given(
    st.lists(st.tuples(st.integers(0, 60), requests()), max_size=60),
    st.lists(st.integers(1, 240), min_size=6, max_size=6),
)
@settings(max_examples=100, deadline=None)
def test_ticks_respect_cooldown_and_caps_and_lose_nothing(arrivals, durations):
    """A simulated world: launched backfills run for a while, then cool down; the policy runs
    every 10 s over a durable queue until it is empty."""
    runtime = dict(zip(sorted(ENVIRONMENTS), durations, strict=True))
    started: dict[str, datetime] = {}
    completed: dict[str, datetime] = {}
    launches: list[tuple[str, str, datetime]] = []
    locks: dict[str, datetime] = {}
    queue: list[BackfillRequest] = []
    fates: dict[str, Outcome] = {}
    by_tick = {}
    for tick, request in arrivals:
        by_tick.setdefault(tick, []).append(request)
    now = T0
    for tick in range(400):
        now = T0 + tick * TICK
        for request in by_tick.get(tick, []):
            queue.append(BackfillRequest.new(
                organisation=request.organisation, environment=request.environment,
                window_start=request.window_start, window_end=request.window_end,
                reason=request.reason, created_at=now,
            ))  # fmt: skip
        guarded = {}
        for env in ENVIRONMENTS:
            if env in started and now < completed[env]:
                guarded[env] = ("running", "running")
            elif env in started and now < completed[env] + COOLDOWN:
                guarded[env] = ("cooldown", "cooldown")
        world = WorldView(guarded, locks, [(org, at) for _, org, at in launches])
        result = decide(queue, world, POLICY, now)
        for decision in result.decisions:
            fates[decision.job_id] = decision.outcome
            for absorbed in decision.request.coalesced:
                fates.setdefault(absorbed, Outcome.COALESCED)
        for launched in result.launches:
            launches.append((launched.environment, launched.organisation, now))
            started[launched.environment] = now
            completed[launched.environment] = now + timedelta(seconds=runtime[launched.environment])
            locks[launched.dedup_key] = now + POLICY.dedup_ttl
        queue = result.still_queued
        if not queue and tick > 60:
            break
    # Nothing lost: every request ended published, coalesced, suppressed or dropped — except
    # those of a deny-listed organisation, which stay queued until they age out.
    stuck = [r for r in queue if POLICY.cap(r.organisation) > 0]
    assert stuck == []
    assert all(
        not outcome.stays_queued
        for job, outcome in fates.items()
        if job not in {r.job_id for r in queue}
    )
    # No two launches of one environment within its cooldown.
    for env in ENVIRONMENTS:
        times = sorted(at for e, _, at in launches if e == env)
        assert all(b - a >= COOLDOWN for a, b in itertools.pairwise(times))
    # No organisation over its cap in any rolling minute.
    for _, org, at in launches:
        in_window = [t for _, o, t in launches if o == org and at - RATE_WINDOW < t <= at]
        assert len(in_window) <= POLICY.cap(org)


def test_a_failed_backfill_is_retried_until_its_attempts_run_out():
    request = BackfillRequest.new(
        organisation="org0", environment="env0", window_start=T0, window_end=T0,
        reason=Reason.CHANGE, created_at=T0, max_attempts=2,
    )  # fmt: skip
    second = request.retry(T0)
    assert (second.reason, second.attempt, second.window_start) == (Reason.RETRY, 2, T0)
    third = second.retry(T0)
    [decision] = decide([third], EMPTY_WORLD, POLICY, T0).decisions
    assert decision.outcome is Outcome.DROPPED_MAX_ATTEMPTS


def test_the_merged_request_keeps_the_earliest_creation_and_most_urgent_reason():
    early = BackfillRequest.new(
        organisation="org0", environment="env0", window_start=T0,
        window_end=T0 + timedelta(minutes=10), reason=Reason.SCHEDULE,
        created_at=T0 - timedelta(hours=1),
    )  # fmt: skip
    late = BackfillRequest.new(
        organisation="org0", environment="env0", window_start=T0 + timedelta(minutes=12),
        window_end=T0 + timedelta(minutes=20), reason=Reason.MANUAL, created_at=T0,
    )  # fmt: skip
    far = BackfillRequest.new(
        organisation="org0", environment="env0", window_start=T0 + timedelta(hours=3),
        window_end=T0 + timedelta(hours=4), reason=Reason.CHANGE, created_at=T0,
    )  # fmt: skip
    result = decide([late, far, early], EMPTY_WORLD, POLICY, T0 + timedelta(hours=5))
    by_job = {d.job_id: d for d in result.decisions}
    merged = by_job[early.job_id].request
    assert (merged.window_start, merged.window_end) == (T0, T0 + timedelta(minutes=20))
    assert (merged.reason, merged.created_at, merged.coalesced) == (
        Reason.MANUAL, early.created_at, (late.job_id,)
    )  # fmt: skip
    assert by_job[late.job_id].outcome is Outcome.COALESCED
    assert by_job[early.job_id].outcome is Outcome.PUBLISHED
    assert by_job[far.job_id].outcome is Outcome.DEFERRED_RUNNING  # one launch per tick


def test_dedup_and_guard_decisions_are_reported():
    request = BackfillRequest.new(
        organisation="org0", environment="env0", window_start=T0, window_end=T0,
        reason=Reason.CHANGE, created_at=T0,
    )  # fmt: skip
    locked = WorldView({}, {request.dedup_key: T0 + timedelta(minutes=1)}, [])
    assert decide([request], locked, POLICY, T0).decisions[0].outcome is Outcome.DEDUP_SUPPRESSED
    cooling = WorldView({"env0": ("cooldown", "cooldown (30s left)")}, {}, [])
    [deferred] = decide([request], cooling, POLICY, T0).decisions
    assert (deferred.outcome, deferred.detail) == (Outcome.DEFERRED_COOLDOWN, "cooldown (30s left)")
    capped = WorldView({}, {}, [("org0", T0 - timedelta(seconds=5))] * 2)
    assert decide([request], capped, POLICY, T0).decisions[0].outcome is Outcome.RATE_LIMITED
    assert (
        decide([request], capped, POLICY, T0 + RATE_WINDOW).decisions[0].outcome
        is Outcome.PUBLISHED
    )
