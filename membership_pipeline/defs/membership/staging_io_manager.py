"""The IO manager of a sharded backfill's inner steps: everything they hand each other lives in
the store, so the steps can run in any process on any host (multiprocess, Celery, Kubernetes)
with no shared filesystem.

- The plan step's outputs (the plan, and one ``ShardTask`` per shard) were recorded by
  ``store.stage_plan``; loading them reads the plan back by the run that owns the claim.
- A shard step's output (its bitmaps) is **staged into the shadow version** here: a fresh
  attempt replaces whatever an earlier attempt wrote. Nothing loads it: the final step depends
  on the shards' completion and reads their reports from the store in one query.
- Only the final step's output goes to ``PublishingIOManager``, which seals and flips.
"""

from typing import Any

import dagster as dg

from membership_pipeline.backfill.delta import DeltaOutcome, stage_delta
from membership_pipeline.backfill.shards import ShardOutcome, ShardTask
from membership_pipeline.backfill.staging import stage_shard
from membership_pipeline.defs.membership.resources import MembershipStoreResource
from membership_pipeline.storage import StagedPlan

# Its resource key: the backfill's inner steps name it; nothing else uses it (Dagster's default
# ``io_manager`` stays Dagster's own).
STAGING_IO_MANAGER = "staging_io_manager"


class ShadowStagingIOManager(dg.IOManager):
    def __init__(self, membership_store: MembershipStoreResource) -> None:
        self.membership_store = membership_store

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if isinstance(obj, ShardOutcome):
            report = stage_shard(self.membership_store.get(), obj)
            context.add_output_metadata(
                {
                    "version": obj.plan.version_id,
                    "first_id": obj.spec.first_id,
                    "last_id": obj.spec.last_id,
                    "identities": report["identities"],
                    "trait_rows": report["trait_rows"],
                    "trait_keys_read": dg.MetadataValue.json(report["trait_keys_read"]),
                    "attempt": report["attempt"],
                    "peak_rss_mb": report["peak_rss_mb"],
                    **{f"seconds_{k}": v for k, v in report["seconds"].items()},
                }
            )
        elif isinstance(obj, DeltaOutcome):
            report = stage_delta(self.membership_store.get(), obj)
            context.add_output_metadata(
                {
                    "version": obj.plan.version_id,
                    "identities_reevaluated": report["identities_reevaluated"],
                    "trait_rows": report["trait_rows"],
                    "peak_rss_mb": report["peak_rss_mb"],
                    **{f"delta_{k}": v for k, v in report["delta"].items()},
                    **{f"seconds_{k}": v for k, v in report["seconds"].items()},
                }
            )
        elif not isinstance(obj, StagedPlan | ShardTask):
            raise TypeError(f"{type(obj).__name__} is not a value of a sharded backfill's steps")

    def load_input(self, context: dg.InputContext) -> StagedPlan | ShardTask:
        upstream = context.upstream_output
        assert upstream is not None
        plan = self.membership_store.get().load_plan(context.partition_key, upstream.run_id)
        if upstream.name == "plan":
            return plan
        if upstream.name == "shards":
            return ShardTask(plan, plan.shard(str(upstream.mapping_key)))
        raise TypeError(
            f"output {upstream.name!r} of {upstream.step_key} is not loaded as an input"
        )


# A plain IO manager over the shared store resource (not a nested Pythonic resource, whose
# initialisation in Dagster 1.13 reads the deprecated InitResourceContext.dagster_run).
@dg.io_manager(required_resource_keys={"membership_store"})
def staging_io_manager(context: dg.InitResourceContext) -> ShadowStagingIOManager:
    return ShadowStagingIOManager(context.resources.membership_store)
