"""One dispatch tick: read the queue and the world, decide, record, report each decision."""

from __future__ import annotations

from datetime import datetime

from membership_pipeline.dispatch.policy import PolicySettings, TickResult, WorldView, decide
from membership_pipeline.dispatch.queue import RequestQueue
from membership_pipeline.dispatch.requests import BackfillRequest
from membership_pipeline.storage import MembershipStore
from membership_pipeline.structured_logging import get_logger

log = get_logger("dispatch")


def preview_tick(
    queue: RequestQueue, store: MembershipStore, settings: PolicySettings, now: datetime
) -> tuple[list[BackfillRequest], TickResult]:
    """What a tick would decide now; nothing is recorded."""
    pending = queue.pending()
    refusals = store.refusals(sorted({r.environment for r in pending}))
    world = WorldView(
        guarded={env: (refused.reason, refused.describe()) for env, refused in refusals.items()},
        dedup_locks=queue.dedup_locks(now),
        recent_launches=queue.recent_launches(now),
    )
    return pending, decide(pending, world, settings, now)


def dispatch_tick(
    queue: RequestQueue, store: MembershipStore, settings: PolicySettings, now: datetime
) -> TickResult:
    pending, result = preview_tick(queue, store, settings, now)
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
