"""The periodic refresh of every environment, as schedule requests through the dispatcher. Its
cron is the deployment's (``MEMBERSHIP_REFRESH_CRON``, every 6 hours by default): what change
detection cannot see (deleted identities or traits, edited trait values) is published by then."""

from __future__ import annotations

import dagster as dg

from membership_pipeline.defs.membership.deployment import DEFAULT_REFRESH_CRON
from membership_pipeline.defs.membership.jobs import bitmaps_job
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import (
    DispatchPolicyResource,
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.run_requests import enqueue_and_dispatch, skip_reason
from membership_pipeline.dispatch.intake import RequestIntake

SCHEDULE_NAME = "membership_refresh_schedule"


def refresh_every_environment(
    context: dg.ScheduleEvaluationContext,
    flagsmith: FlagsmithSourceResource,
    membership_store: MembershipStoreResource,
    dispatch_policy: DispatchPolicyResource,
) -> list[dg.RunRequest] | dg.SkipReason:
    organisations = flagsmith.organisations()
    now = membership_store.get().clock()
    partitions = context.instance.get_dynamic_partitions(environments_partitions.name)
    requests = RequestIntake(dispatch_policy.max_attempts).refresh(organisations, partitions, now)
    run_requests, result = enqueue_and_dispatch(membership_store, dispatch_policy, requests, now)
    return run_requests or skip_reason(result)


def refresh_schedule(cron: str = DEFAULT_REFRESH_CRON) -> dg.ScheduleDefinition:
    return dg.schedule(
        name=SCHEDULE_NAME,
        job=bitmaps_job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Requests a refresh of every environment ({cron}; the deployment's "
        "MEMBERSHIP_REFRESH_CRON, every 6 hours by default): what change detection cannot see "
        "(deleted identities or traits, edited trait values) is published by then. The "
        "dispatcher defers environments running or cooling down and applies the caps.",
    )(refresh_every_environment)


membership_refresh_schedule = refresh_schedule()  # with the embedded default cron
