"""``flagsmith_segment_membership_counts``: after each publish of an environment, its exact
segment counts in Flagsmith's own ``segment_membership_segmentmembershipcount`` table, which
Flagsmith's segment API returns as ``membership_counts`` and its dashboard shows (instead of
its 6-hourly ClickHouse counts). Downstream of the bitmaps, in the same partition; part of every
backfill job's run when the deployment sets ``MEMBERSHIP_FLAGSMITH_COUNTS_URL``, absent from the
definitions otherwise. It writes whatever version is published when it runs, so a run whose
bitmaps step was skipped by the guard still leaves the table as the published version says."""

# (No ``from __future__ import annotations``: Dagster checks the context's annotation as a type.)
from datetime import UTC, datetime

import dagster as dg

from membership_pipeline.defs.membership.assets import BITMAPS
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import (
    FlagsmithCountsResource,
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.exports.flagsmith_counts import TABLE, write_counts

EXPORT_GROUP = "flagsmith_export"  # the backfill jobs select this group: empty when it is off
FLAGSMITH_COUNTS = dg.AssetKey("flagsmith_segment_membership_counts")


@dg.asset(
    key=FLAGSMITH_COUNTS,
    partitions_def=environments_partitions,
    deps=[BITMAPS],
    group_name=EXPORT_GROUP,
    kinds={"postgres"},
    description=f"The published version's exact segment counts in Flagsmith's {TABLE} (what "
    "its dashboard shows), upserted after each publish; rows of deleted segments removed.",
)
def flagsmith_segment_membership_counts(
    context: dg.AssetExecutionContext,
    membership_store: MembershipStoreResource,
    flagsmith: FlagsmithSourceResource,
    flagsmith_counts: FlagsmithCountsResource,
) -> dg.MaterializeResult:
    env_key = context.partition_key
    published = membership_store.get().reader(pointer_ttl=0).published(env_key)
    with flagsmith.open() as source:
        environment_id = source.environment(env_key).id
    with flagsmith_counts.engine() as engine:
        written = write_counts(
            engine,
            environment_id,
            published.segment_counts(),
            set(published.segment_keys),
            datetime.now(UTC),
        )
    return dg.MaterializeResult(
        metadata={
            "version": published.version_id,
            "environment_id": environment_id,
            "upserted": written.upserted,
            "removed": written.removed,
            "skipped_deleted_segments": dg.MetadataValue.json(written.skipped),
        }
    )
