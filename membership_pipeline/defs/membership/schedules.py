"""The periodic refresh of every environment, as schedule requests through the dispatcher."""

from __future__ import annotations

import os

import dagster as dg

from membership_pipeline.defs.membership.dispatch import (
    DispatchPolicyResource,
    enqueue_and_dispatch,
    skip_reason,
)
from membership_pipeline.defs.membership.jobs import bitmaps_job
from membership_pipeline.defs.membership.resources import (
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.dispatch.requests import BackfillRequest, Reason

# Change detection sees new identities, new traits and segment edits; a deleted identity or
# trait and an edited trait value leave no trace it can read cheaply, so this refresh catches
# them: every 6 hours by default (Flagsmith's own membership counts refresh as often).
REFRESH_CRON = os.environ.get("MEMBERSHIP_REFRESH_CRON", "0 */6 * * *")


@dg.schedule(
    job=bitmaps_job,
    cron_schedule=REFRESH_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Requests a refresh of every environment (MEMBERSHIP_REFRESH_CRON, every 6 hours "
    "by default): what change detection cannot see (deleted identities or traits, edited trait "
    "values) is published by then. The dispatcher defers environments running or cooling down "
    "and applies the caps.",
)
def membership_refresh_schedule(
    context: dg.ScheduleEvaluationContext,
    flagsmith: FlagsmithSourceResource,
    membership_store: MembershipStoreResource,
    dispatch_policy: DispatchPolicyResource,
) -> list[dg.RunRequest] | dg.SkipReason:
    organisations = flagsmith.organisations()
    now = membership_store.get().clock()
    partitions = context.instance.get_dynamic_partitions("environments")
    requests = [
        BackfillRequest.new(
            organisation=organisations[key],
            environment=key,
            window_start=now,
            window_end=now,
            reason=Reason.SCHEDULE,
            created_at=now,
            max_attempts=dispatch_policy.max_attempts,
        )
        for key in partitions
        if key in organisations
    ]
    run_requests, result = enqueue_and_dispatch(membership_store, dispatch_policy, requests, now)
    return run_requests or skip_reason(result)
