"""The jobs that materialize ``segment_membership_bitmaps`` partitions (and, when the deployment
exports them, Flagsmith's counts right after): both select the same assets, and differ only in
the executor.

- ``segment_membership_backfill``: the definitions' executor (the deployment's
  ``MEMBERSHIP_EXECUTOR``: multiprocess, Celery, Kubernetes), for every backfill whose shards are
  worth a process each;
- ``segment_membership_edit``: Dagster's in-process executor, for a delta backfill (the
  identities change data capture saw change) and an incremental backfill that fits one shard
  (a segment edit in an environment of up to a few million identities). Its three steps run one
  after another in the run's process: launching three step processes would cost about as much
  as the work (measured by ``membership-benchmark-incremental``).
"""

from __future__ import annotations

import dagster as dg

from membership_pipeline.defs.membership.assets import BITMAPS
from membership_pipeline.defs.membership.flagsmith_counts import EXPORT_GROUP

BACKFILL_JOB = "segment_membership_backfill"
EDIT_JOB = "segment_membership_edit"

# The bitmaps, and downstream in the same run what the deployment exports after each publish
# (Flagsmith's counts: a group that is empty when the export is off).
PUBLISH = dg.AssetSelection.assets(BITMAPS) | dg.AssetSelection.groups(EXPORT_GROUP)

bitmaps_job = dg.define_asset_job(BACKFILL_JOB, selection=PUBLISH)
edit_job = dg.define_asset_job(
    EDIT_JOB,
    selection=PUBLISH,
    executor_def=dg.in_process_executor,
    description="Delta backfills, and incremental backfills that fit one shard: every step in "
    "the run's process.",
)
