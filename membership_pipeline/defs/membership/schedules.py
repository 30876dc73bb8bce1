"""The periodic refresh of every environment, through the same guard as the sensors."""

from __future__ import annotations

import os

import dagster as dg

from membership_pipeline.defs.membership.guard import guarded_launches
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import MembershipStoreResource
from membership_pipeline.defs.membership.sensors import bitmaps_job

REFRESH_CRON = os.environ.get("MEMBERSHIP_REFRESH_CRON", "0 * * * *")


@dg.schedule(
    job=bitmaps_job,
    cron_schedule=REFRESH_CRON,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Refreshes every environment (MEMBERSHIP_REFRESH_CRON, hourly by default), "
    "skipping those running or in their cooldown.",
)
def membership_refresh_schedule(
    context: dg.ScheduleEvaluationContext, membership_store: MembershipStoreResource
) -> list[dg.RunRequest] | dg.SkipReason:
    environments = context.instance.get_dynamic_partitions(environments_partitions.name)
    launches = guarded_launches(membership_store.get(), environments, reason="schedule")
    return launches.run_requests or launches.skip_reason()
