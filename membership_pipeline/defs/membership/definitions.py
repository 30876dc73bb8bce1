"""The membership domain's Dagster definitions for one deployment: its assets, jobs, sensors, the
refresh schedule with its cron, the executor it chose, and its resources (the embedded defaults,
with the deployment's variables bound as ``dg.EnvVar``: see ``deployment.py``)."""

from __future__ import annotations

import dagster as dg

from membership_pipeline.defs.membership.assets import bitmaps_asset, segment_membership_counts
from membership_pipeline.defs.membership.capture_sensor import capture_sensor
from membership_pipeline.defs.membership.deployment import (
    GC_CRON_VARIABLE,
    REFRESH_CRON_VARIABLE,
    Deployment,
)
from membership_pipeline.defs.membership.executors import executor_for
from membership_pipeline.defs.membership.flagsmith_counts import (
    flagsmith_segment_membership_counts,
)
from membership_pipeline.defs.membership.garbage_collection import (
    garbage_collection_job,
    garbage_collection_schedule,
)
from membership_pipeline.defs.membership.jobs import bitmaps_job, edit_job
from membership_pipeline.defs.membership.publishing_io_manager import (
    PUBLISHING_IO_MANAGER,
    publishing_io_manager,
)
from membership_pipeline.defs.membership.resources import (
    ChangeCaptureResource,
    DispatchPolicyResource,
    FlagsmithCountsResource,
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.schedules import refresh_schedule
from membership_pipeline.defs.membership.sensors import (
    backfill_dispatch_sensor,
    backfill_reconcile_sensor,
    backfill_retry_sensor,
    environment_discovery_sensor,
)
from membership_pipeline.defs.membership.staging_io_manager import (
    STAGING_IO_MANAGER,
    staging_io_manager,
)
from membership_pipeline.model.errors import InvalidSetting


def membership_definitions(deployment: Deployment) -> dg.Definitions:
    try:
        schedule = refresh_schedule(deployment.refresh_cron)
    except dg.DagsterInvalidDefinitionError as error:
        raise InvalidSetting(f"{REFRESH_CRON_VARIABLE}: {error}") from None
    try:
        gc_schedule = garbage_collection_schedule(deployment.gc_cron)
    except dg.DagsterInvalidDefinitionError as error:
        raise InvalidSetting(f"{GC_CRON_VARIABLE}: {error}") from None
    return dg.Definitions(
        assets=[
            bitmaps_asset(deployment.shard_identities, deployment.shard_retries),
            segment_membership_counts,
            *([flagsmith_segment_membership_counts] if deployment.exports_counts else []),
        ],
        jobs=[bitmaps_job, edit_job, garbage_collection_job],
        sensors=[
            capture_sensor(deployment.capture_interval),
            environment_discovery_sensor,
            backfill_dispatch_sensor,
            backfill_retry_sensor,
            backfill_reconcile_sensor,
        ],
        schedules=[schedule, gc_schedule],
        resources=build_resources(deployment=deployment),
        executor=executor_for(deployment),
    )


def build_resources(
    source_url: str | None = None,
    store_url: str | None = None,
    *,
    deployment: Deployment | None = None,
) -> dict[str, object]:
    """The resources with the deployment's bindings (default: the current environment's);
    ``source_url`` / ``store_url`` override the URLs (tests, the demo)."""
    deployment = deployment or Deployment.current()

    def configured(resource: str, **given: str | None) -> dict[str, object]:
        return deployment.bindings(resource) | {k: v for k, v in given.items() if v is not None}

    return {
        "flagsmith": FlagsmithSourceResource(**configured("flagsmith", url=source_url)),
        "membership_store": MembershipStoreResource(
            **configured("membership_store", url=store_url)
        ),
        PUBLISHING_IO_MANAGER: publishing_io_manager,
        # The backfill's inner steps hand each other values through the store (shards are
        # staged into the shadow version), never through a local disk.
        STAGING_IO_MANAGER: staging_io_manager,
        "dispatch_policy": DispatchPolicyResource(**configured("dispatch_policy")),
        "change_capture": ChangeCaptureResource(**configured("change_capture")),
        # Only with the export (the asset that uses it is only there then).
        **(
            {"flagsmith_counts": FlagsmithCountsResource(**configured("flagsmith_counts"))}
            if deployment.exports_counts
            else {}
        ),
    }
