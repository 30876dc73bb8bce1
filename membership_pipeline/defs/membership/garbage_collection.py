"""Garbage collection as a scheduled job: retired versions beyond those kept for rollback, the
shadows of crashed or failed backfills, and answers by identity no version uses
(``storage.garbage``). Under a stream of trait writes capture publishes a delta every few
seconds, so versions would pile up between manual ``membership gc`` runs; the schedule
(``MEMBERSHIP_GC_CRON``, every 10 minutes by default) keeps the store's size bounded by what
changed since, not by how long it has run."""

from datetime import timedelta

import dagster as dg
from pydantic import Field

from membership_pipeline.defs.membership.deployment import DEFAULT_GC_CRON
from membership_pipeline.defs.membership.resources import MembershipStoreResource

GC_JOB = "membership_garbage_collection"
GC_SCHEDULE = "membership_garbage_collection_schedule"


class GarbageCollectionConfig(dg.Config):
    keep_retired: int = Field(
        default=2, ge=0, description="Retired versions kept per environment, for rollback."
    )
    grace_seconds: float = Field(
        default=300,
        ge=0,
        description="A retired version is kept at least this long (readers holding it finish).",
    )


@dg.op(description="Collect retired versions beyond those kept, abandoned shadows, and answers "
       "by identity no version uses.")  # fmt: skip
def collect_garbage(
    context: dg.OpExecutionContext,
    config: GarbageCollectionConfig,
    membership_store: MembershipStoreResource,
) -> dg.Output[None]:
    store = membership_store.get()
    report = store.collect_garbage(config.keep_retired, timedelta(seconds=config.grace_seconds))
    # Deltas' folds leave dead answer rows; where autovacuum is off nothing else reclaims them.
    vacuumed = store.vacuum_answers()
    context.log.info(
        f"collected {len(report.retired_versions)} retired and {len(report.abandoned_versions)} "
        f"abandoned versions, {report.bytes_freed:,} bytes, {report.answer_rows_deleted:,} "
        "answer rows"
    )
    return dg.Output(
        None,
        metadata={
            "retired_versions": len(report.retired_versions),
            "abandoned_versions": len(report.abandoned_versions),
            "still_referenced_versions": len(report.still_referenced_versions),
            "bytes_freed": report.bytes_freed,
            "answer_rows_deleted": report.answer_rows_deleted,
            **({"answers_vacuum_seconds": round(vacuumed, 3)} if vacuumed is not None else {}),
        },
    )


@dg.job(name=GC_JOB, description=__doc__.split("\n\n")[0])
def garbage_collection_job() -> None:
    collect_garbage()


def garbage_collection_schedule(cron: str = DEFAULT_GC_CRON) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=GC_SCHEDULE,
        job=garbage_collection_job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Collects garbage in the store ({cron}; the deployment's MEMBERSHIP_GC_CRON)"
        ": deltas publish a version every few seconds under a stream of trait writes.",
    )
