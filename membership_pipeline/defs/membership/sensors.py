"""Sensors: environment discovery (dynamic partitions, first backfills) and the reconciler that
fails the claims of runs that died without failing them (a SIGKILL, a lost worker)."""

from __future__ import annotations

import dagster as dg

from membership_pipeline.defs.membership.assets import BITMAPS
from membership_pipeline.defs.membership.guard import guarded_launches
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import (
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.structured_logging import get_logger

log = get_logger("backfill")

FINISHED = {
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
}
bitmaps_job = dg.define_asset_job("segment_membership_backfill", selection=[BITMAPS])


@dg.sensor(
    job=bitmaps_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds Flagsmith environments as partitions (and removes deleted ones); launches "
    "each new environment's first backfill through the guard.",
)
def environment_discovery_sensor(
    context: dg.SensorEvaluationContext,
    flagsmith: FlagsmithSourceResource,
    membership_store: MembershipStoreResource,
) -> dg.SensorResult:
    source = flagsmith.open()
    try:
        live = {info.api_key for info in source.environments()}
    finally:
        source.close()
    known = set(context.instance.get_dynamic_partitions(environments_partitions.name))
    added, removed = sorted(live - known), sorted(known - live)
    launches = guarded_launches(membership_store.get(), added, reason="new_environment")
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if added:
        requests.append(environments_partitions.build_add_request(added))
    if removed:
        requests.append(environments_partitions.build_delete_request(removed))
    if added or removed:
        log.info("segment_membership.backfill.partitions_changed", added=added, removed=removed)
    return dg.SensorResult(
        run_requests=launches.run_requests,
        dynamic_partitions_requests=requests,
        skip_reason=None if (launches.run_requests or requests) else launches.skip_reason(),
    )


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails the claim of a backfill whose run is no longer alive (finished without "
    "failing it, or killed: its lease lapses), so no environment stays 'running'.",
)
def backfill_reconcile_sensor(
    context: dg.SensorEvaluationContext, membership_store: MembershipStoreResource
) -> dg.SkipReason:
    instance = context.instance

    def is_owner_alive(run_id: str | None) -> bool | None:
        run = instance.get_run_by_id(run_id) if run_id else None
        if run is None:
            return None  # not a run of this instance (the demo, a script): the lease decides
        # A finished run holds nothing; a run Dagster still calls started may have been killed
        # (a CLI run stays STARTED after a SIGKILL), so for those the lease decides.
        return False if run.status in FINISHED else None

    reconciled = membership_store.get().reconcile_stale_claims(is_owner_alive)
    for claim in reconciled:
        log.warning(
            "segment_membership.backfill.reconciled",
            environment=claim.environment_key,
            run_id=claim.owner,
            reason=claim.reason,
        )
    if not reconciled:
        return dg.SkipReason("no stale claims")
    return dg.SkipReason(
        "reconciled to failed: "
        + ", ".join(f"{c.environment_key} ({c.reason}, run {c.owner})" for c in reconciled)
    )
