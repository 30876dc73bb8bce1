"""Sensors: environment discovery, change detection, retries of failed backfills (all through
the dispatcher), and the reconciler that fails the claims of runs that died without failing
them (a SIGKILL, a lost worker)."""

from __future__ import annotations

import dagster as dg

from membership_pipeline.changes.capture import capturing
from membership_pipeline.changes.detection import detect_changes
from membership_pipeline.defs.membership.jobs import bitmaps_job, edit_job
from membership_pipeline.defs.membership.orphaned_runs import VERDICT_TAG, end_orphaned_runs
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import (
    DispatchPolicyResource,
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.run_requests import enqueue_and_dispatch, skip_reason
from membership_pipeline.dispatch.intake import RequestIntake
from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.run_tags import (
    JOB_TAG,
    PARTITION_TAG,
    is_dispatched,
    request_from_tags,
)
from membership_pipeline.model.changes import IDENTITIES, TRAITS
from membership_pipeline.structured_logging import get_logger

log = get_logger("backfill")

FINISHED = {
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
}


@dg.sensor(
    job=bitmaps_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds Flagsmith environments as partitions (and removes deleted ones), and "
    "requests each new environment's first backfill through the dispatcher.",
)
def environment_discovery_sensor(
    context: dg.SensorEvaluationContext,
    flagsmith: FlagsmithSourceResource,
    membership_store: MembershipStoreResource,
    dispatch_policy: DispatchPolicyResource,
) -> dg.SensorResult:
    live = flagsmith.organisations()
    known = set(context.instance.get_dynamic_partitions(environments_partitions.name))
    added, removed = sorted(set(live) - known), sorted(known - set(live))
    now = membership_store.get().clock()
    requests = RequestIntake(dispatch_policy.max_attempts).new_environments(live, added, now)
    run_requests, result = enqueue_and_dispatch(membership_store, dispatch_policy, requests, now)
    partition_requests: list[
        dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest
    ] = []
    if added:
        partition_requests.append(environments_partitions.build_add_request(added))
    if removed:
        partition_requests.append(environments_partitions.build_delete_request(removed))
    if added or removed:
        log.info("segment_membership.backfill.partitions_changed", added=added, removed=removed)
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=partition_requests,
        skip_reason=None if (run_requests or partition_requests) else skip_reason(result),
    )


@dg.sensor(
    jobs=[bitmaps_job, edit_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Change detection: requests a backfill of every environment with identities or "
    "traits created, or segments changed, since the last tick (primary-key range scans above "
    "durable watermarks); then runs a dispatch tick over the queue (manual requests, deferred "
    "and rate-limited ones included).",
)
def backfill_dispatch_sensor(
    context: dg.SensorEvaluationContext,
    flagsmith: FlagsmithSourceResource,
    membership_store: MembershipStoreResource,
    dispatch_policy: DispatchPolicyResource,
) -> dg.SensorResult:
    store = membership_store.get()
    now = store.clock()
    # Capture's stream carries every identity, trait and segment change (the segment tables are
    # in its publication) and requests each at once: rows seen here are no reason for a full
    # backfill, and a second request for an edit capture has already published would run as
    # full once identities are pending. So nothing is scanned, only the watermarks move.
    carried = capturing(store.database, now)
    with flagsmith.open() as source:
        detection = detect_changes(
            source,
            store.database,
            carried_by_capture=carried,
            rows_per_tick=flagsmith.detection_rows_per_tick,
        )
    requests = []
    if detection.anything:
        assert detection.changes is not None
        published = {m.environment_key: m.published_as_of for m in store.all_metadata()}
        intake = RequestIntake(dispatch_policy.max_attempts)
        requests = intake.changes(detection.changes, detection.live, published, now)
    run_requests, result = enqueue_and_dispatch(
        membership_store,
        dispatch_policy,
        requests,
        now,
        also=lambda conn: detection.save(conn, now),
    )
    log.debug(
        "segment_membership.changes.detected",
        first_tick=detection.previous is None,
        carried_by_capture=carried,
        requested=sorted(r.environment for r in requests),
        identity_last_id=detection.keep.tables[IDENTITIES].last_id,
        trait_last_id=detection.keep.tables[TRAITS].last_id,
    )
    return dg.SensorResult(
        run_requests=run_requests, skip_reason=None if run_requests else skip_reason(result)
    )


@dg.run_failure_sensor(
    monitored_jobs=[bitmaps_job, edit_job],
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-queues a failed dispatched backfill as a retry (attempt + 1); the dispatch "
    "sensor launches it when the guard allows, and drops it past its max attempts.",
)
def backfill_retry_sensor(
    context: dg.RunFailureSensorContext,
    membership_store: MembershipStoreResource,
    dispatch_policy: DispatchPolicyResource,
) -> None:
    tags = context.dagster_run.tags
    if not is_dispatched(tags):
        return  # not a dispatched run (the UI, the CLI): nothing to retry
    if tags.get(VERDICT_TAG) == "published":
        log.info(
            "segment_membership.dispatch.retry_not_needed",
            environment=tags[PARTITION_TAG],
            job_id=tags[JOB_TAG],
            reason="its version was published before its process died",
        )
        return
    now = membership_store.get().clock()
    failed = request_from_tags(tags, created_at=now)
    retry = RequestIntake(dispatch_policy.max_attempts).retry(failed, now)
    DatabaseQueue(membership_store.get().database).enqueue([retry])
    log.warning(
        "segment_membership.dispatch.retry_enqueued",
        environment=retry.environment,
        job_id=retry.job_id,
        failed_job_id=failed.job_id,
        attempt=retry.attempt,
        max_attempts=retry.max_attempts,
    )


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails the claim of a backfill whose run is no longer alive (finished without "
    "failing it, or killed: its lease lapses), so no environment stays 'running'; then ends the "
    "Dagster runs of backfills whose process is gone, with the store's verdict as a run tag.",
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

    store = membership_store.get()
    reconciled = store.reconcile_stale_claims(is_owner_alive)
    for claim in reconciled:
        log.warning(
            "segment_membership.backfill.reconciled",
            environment=claim.environment_key,
            run_id=claim.owner,
            reason=claim.reason,
        )
    ended = end_orphaned_runs(instance, store, membership_store.orphaned_run_grace)
    said = [f"{c.environment_key} ({c.reason}, run {c.owner})" for c in reconciled]
    ended_said = [f"run {e.run_id} of {e.environment_key} ({e.verdict.kind})" for e in ended]
    if not said and not ended_said:
        return dg.SkipReason("no stale claims")
    return dg.SkipReason(
        "; ".join(
            ([f"reconciled to failed: {', '.join(said)}"] if said else [])
            + ([f"ended: {', '.join(ended_said)}"] if ended_said else [])
        )
    )
