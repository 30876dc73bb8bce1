"""Every launch goes through the dispatcher: discovery, the schedule, change detection and
manual requests enqueue backfill requests (built by ``dispatch.intake``) in the durable queue; a
tick of the policy decides which to launch, and the published ones become run requests whose
tags carry the request (``dispatch.run_tags``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

import dagster as dg
import sqlalchemy as sa

from membership_pipeline.defs.membership.jobs import BACKFILL_JOB, EDIT_JOB
from membership_pipeline.defs.membership.resources import (
    DispatchPolicyResource,
    MembershipStoreResource,
)
from membership_pipeline.dispatch.dispatcher import dispatch_tick
from membership_pipeline.dispatch.policy import Outcome, TickResult
from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.requests import BackfillRequest
from membership_pipeline.dispatch.run_tags import request_tags
from membership_pipeline.storage.environment_metadata import read_metadata_many


def enqueue_and_dispatch(
    store_resource: MembershipStoreResource,
    policy: DispatchPolicyResource,
    requests: Iterable[BackfillRequest],
    now: datetime | None = None,
    also: Callable[[sa.Connection], None] | None = None,
    eligible: Callable[[BackfillRequest], bool] | None = None,
) -> tuple[list[dg.RunRequest], TickResult]:
    """Queue the requests (and ``also``'s writes, in the same transaction), then run a
    dispatch tick (over the ``eligible`` requests only, when given)."""
    store = store_resource.get()
    queue = DatabaseQueue(store.database)
    queue.enqueue(requests, also)
    result = dispatch_tick(queue, store, policy.settings(), now or store.clock(), eligible)
    found = {}
    if result.launches:
        with store.database.reader.connect() as conn:
            found = read_metadata_many(conn, [r.environment for r in result.launches])
    run_requests = []
    for launched in result.launches:
        known = found.get(launched.environment)
        size = known.published_identity_count if known else None
        # One step's work: a delta (its changed identities), or an incremental backfill of an
        # environment that fits one shard; Dagster's in-process executor runs it without
        # launching step processes.
        small = launched.delta or (
            launched.segments is not None
            and size is not None
            and size <= policy.edit_job_max_identities
        )
        job_name = EDIT_JOB if small else BACKFILL_JOB
        run_requests.append(run_request(launched, job_name, known.display_name if known else None))
    return run_requests, result


def run_request(
    request: BackfillRequest, job_name: str = BACKFILL_JOB, display_name: str | None = None
) -> dg.RunRequest:
    """Run key = the request's job id (unique per request, never the environment); the request
    as tags, so the run shows why it ran. ``job_name``: ``segment_membership_edit`` for an
    incremental backfill that fits one shard (see jobs.py); ``display_name``: the environment's
    name as the store last recorded it (its run's plan step tags it anyway)."""
    config = {"force": request.force, "mode": request.mode}
    return dg.RunRequest(
        job_name=job_name,
        run_key=request.job_id,
        partition_key=request.environment,
        tags=request_tags(request, display_name),
        run_config={"ops": {"segment_membership_bitmaps": {"config": config}}},
    )


def skip_reason(result: TickResult) -> dg.SkipReason:
    waiting = [
        f"{d.environment}: {d.outcome.value} ({d.detail})"
        for d in result.decisions
        if d.outcome is not Outcome.COALESCED
    ]
    shown = "; ".join(waiting[:10]) + (f" (+{len(waiting) - 10} more)" if len(waiting) > 10 else "")
    return dg.SkipReason(f"no backfill launched: {result.summary()}. {shown}".strip())
