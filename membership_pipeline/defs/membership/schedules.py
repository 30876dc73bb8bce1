"""The periodic refresh of every environment, as schedule requests through the dispatcher."""

from __future__ import annotations

import os

import dagster as dg

from membership_pipeline.defs.membership.dispatch import (
    DispatchPolicyResource,
    enqueue_and_dispatch,
    skip_reason,
)
from membership_pipeline.defs.membership.resources import (
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.sensors import bitmaps_job
from membership_pipeline.dispatch.requests import BackfillRequest, Reason

REFRESH_CRON = os.environ.get("MEMBERSHIP_REFRESH_CRON", "0 * * * *")


@dg.schedule(
    job=bitmaps_job,
    cron_schedule=REFRESH_CRON,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Requests a refresh of every environment (MEMBERSHIP_REFRESH_CRON, hourly by "
    "default); the dispatcher defers those running or cooling down and applies the caps.",
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
