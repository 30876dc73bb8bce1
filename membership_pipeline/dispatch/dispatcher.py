"""One dispatch tick: read the queue and the world, decide, record, report each decision."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from membership_pipeline.dispatch.policy import PolicySettings, TickResult, WorldView, decide
from membership_pipeline.dispatch.queue import RequestQueue
from membership_pipeline.dispatch.requests import BackfillRequest
from membership_pipeline.storage import MembershipStore
from membership_pipeline.structured_logging import get_logger

log = get_logger("dispatch")


def preview_tick(
    queue: RequestQueue,
    store: MembershipStore,
    settings: PolicySettings,
    now: datetime,
    eligible: Callable[[BackfillRequest], bool] | None = None,
) -> tuple[list[BackfillRequest], TickResult]:
    """What a tick would decide now; nothing is recorded. ``eligible``: the requests this tick
    considers (the others stay queued, untouched, for another dispatcher). An environment with a
    request left to the other dispatcher waits for it whole: a delta would otherwise run on a
    version the full backfill left there is about to replace."""
    pending = queue.pending()
    if eligible is not None:
        left = {r.environment for r in pending if not eligible(r)}
        pending = [r for r in pending if eligible(r) and r.environment not in left]
    environments = {r.environment for r in pending}
    # Environments whose every pending request is a delta or incremental one: the (short)
    # change cooldown guards them.
    quick = frozenset(environments - {r.environment for r in pending if r.mode == "full"})
    refusals = store.refusals(sorted(environments), quick)
    world = WorldView(
        guarded={env: (refused.reason, refused.describe()) for env, refused in refusals.items()},
        dedup_locks=queue.dedup_locks(now),
        recent_launches=queue.recent_launches(now),
        recent_delta_launches=queue.recent_launches(now, delta=True),
    )
    return pending, decide(pending, world, settings, now)


def dispatch_tick(
    queue: RequestQueue,
    store: MembershipStore,
    settings: PolicySettings,
    now: datetime,
    eligible: Callable[[BackfillRequest], bool] | None = None,
) -> TickResult:
    pending, result = preview_tick(queue, store, settings, now, eligible)
    queue.record(pending, result, now, settings.dedup_ttl)
    for decision in result.decisions:
        request = decision.request
        log.info(
            f"segment_membership.dispatch.{decision.outcome.value.replace('-', '_')}",
            job_id=decision.job_id,
            environment=decision.environment,
            organisation=decision.organisation,
            reason=request.reason.value,
            attempt=request.attempt,
            window_start=request.window_start.isoformat(),
            window_end=request.window_end.isoformat(),
            detail=decision.detail,
            into=decision.into,
            mode=decision.mode,
            mode_detail=decision.mode_detail,
            segments=None if request.segments is None else len(request.segments),
        )
    return result
