"""``segment_membership_bitmaps``: one partition per environment; materializing a partition is
that environment's backfill, sharded by identity-id range into Dagster steps:

    plan_shards ──► backfill_shard[shard_0] ─┐
                ├─► backfill_shard[shard_1] ─┼─► publish_version ──► (IO manager: seal, flip)
                └─► backfill_shard[...]     ─┘

- ``plan_shards`` claims the environment (the guard), reads its segments and id boundaries in
  one snapshot, decides full, incremental or delta (config ``mode``; see model/refresh_mode.py
  and backfill/delta.py: a delta plan has one step, over the identities capture saw change) and
  records the plan with a new shadow version (an incremental plan holds only the new and edited
  segments, and which of the published version's bitmaps the new version shares);
- each ``backfill_shard`` reads its id range, evaluates the planned segments, audits its share
  of the sample against flag-engine; its output is staged into the shadow version by
  the staging IO manager (retried attempts replace earlier ones);
- ``publish_version`` reports the combined audit as the asset check and hands the staged version
  to ``PublishingIOManager``, which seals it and flips the pointer: one version, one flip.

A graph-backed asset with a dynamic fan-out is Dagster's own construct for this: one
materialization of one partition, one step per shard that any executor (multiprocess, Celery,
Kubernetes) schedules, retries and shows in the UI.
"""

import os
from collections.abc import Iterator
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from membership_pipeline.backfill.audit import AuditFailed, combined_audit
from membership_pipeline.backfill.delta import DeltaOutcome, compute_delta
from membership_pipeline.backfill.lease import LeaseHeartbeat
from membership_pipeline.backfill.planning import plan_backfill
from membership_pipeline.backfill.shards import (
    ShardOutcome,
    ShardTask,
    compute_shard,
    expected_identities,
)
from membership_pipeline.defs.membership.backfill_events import (
    CLAIMED,
    CLAIMING,
    GUARD_TAG,
    fail_backfill_on_step_failure,
    log,
    skip_by_guard,
)
from membership_pipeline.defs.membership.deployment import DEFAULT_SHARD_RETRIES
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.publishing_io_manager import (
    PUBLISHING_IO_MANAGER,
    StagedVersion,
)
from membership_pipeline.defs.membership.resources import (
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.staging_io_manager import STAGING_IO_MANAGER
from membership_pipeline.defs.membership.step_server import preload_in_background
from membership_pipeline.dispatch.run_tags import ENVIRONMENT_NAME_TAG
from membership_pipeline.model.refresh_mode import (
    DEFAULT_DELTA_MAX_SHARE,
    DEFAULT_MAX_CHANGED_SHARE,
    RefreshMode,
)
from membership_pipeline.model.shard_plan import (
    DEFAULT_INCREMENTAL_SHARD_IDENTITIES,
    DEFAULT_SHARD_IDENTITIES,
)
from membership_pipeline.storage import Claim, PublishedMembership, StagedPlan

BITMAPS = dg.AssetKey("segment_membership_bitmaps")
AUDIT_CHECK = "agrees_with_flag_engine"
SHARD_IDENTITIES_HELP = (
    "Identities per shard step (the deployment's default: $MEMBERSHIP_SHARD_IDENTITIES, else "
    "500,000; a 500,000-identity step peaks at about 0.7 GB)."
)


class BackfillConfig(dg.Config):
    """The backfill's settings (``ops: segment_membership_bitmaps: config:``)."""

    force: bool = Field(
        default=False,
        description="Skip the cooldown (never the guard against a running backfill).",
    )
    mode: Literal["full", "incremental", "delta"] = Field(
        default="full",
        description="incremental: re-evaluate only new and edited segments and share the "
        "published version's other bitmaps, when nothing but segment definitions changed; "
        "delta: re-evaluate only the identities change data capture recorded as changed, on "
        "every segment, and rewrite only the chunks holding a changed bit (else either runs as "
        "full, and the materialization says why).",
    )
    delta_max_share: float = Field(
        default=DEFAULT_DELTA_MAX_SHARE,
        description="A delta naming more than this share of the environment's identities runs "
        "as a full backfill.",
    )
    incremental_shard_identities: int = Field(
        default=DEFAULT_INCREMENTAL_SHARD_IDENTITIES,
        description="Identities per shard of an incremental backfill (it evaluates a few "
        "segments, so a shard holds more identities in the same memory).",
    )
    incremental_max_changed_share: float = Field(
        default=DEFAULT_MAX_CHANGED_SHARE,
        description="More than this share of the segments changed: a full backfill instead.",
    )
    audit_sample_size: int = Field(
        default=200,
        description="Identities re-evaluated by flag-engine before the flip, spread over the "
        "shards; a disagreement fails the backfill.",
    )
    audit_seed: int = Field(default=0, description="Seed of the audit's sample.")
    shard_identities: int = Field(
        default=DEFAULT_SHARD_IDENTITIES, description=SHARD_IDENTITIES_HELP
    )


class ShardConfig(dg.Config):
    audit_sample_size: int = Field(default=200, description="The backfill's audit sample size.")
    audit_seed: int = Field(default=0, description="Seed of the audit's sample.")


def _inner_config(outer: dict[str, Any]) -> dict[str, Any]:
    """The asset's one config block (``ops: {segment_membership_bitmaps: {config: ...}}``),
    handed to the steps that use it."""
    audit = {k: outer[k] for k in ("audit_sample_size", "audit_seed")}
    return {"plan_shards": {"config": outer}, "backfill_shard": {"config": audit}}


@dg.op(
    out={
        "plan": dg.Out(StagedPlan, io_manager_key=STAGING_IO_MANAGER, is_required=False),
        "shards": dg.DynamicOut(ShardTask, io_manager_key=STAGING_IO_MANAGER, is_required=False),
    },
    description="Claims the environment, plans its shards and records the plan with a new "
    "shadow version; a run that loses the claim yields nothing and ends as skipped.",
)
def plan_shards(
    context: dg.OpExecutionContext,
    config: BackfillConfig,
    flagsmith: FlagsmithSourceResource,
    membership_store: MembershipStoreResource,
) -> Iterator[dg.Output[StagedPlan] | dg.DynamicOutput[ShardTask]]:
    environment_key = context.partition_key
    if context.job_def.executor_def.name == "in_process":
        preload_in_background()  # the shard step runs next in this process: load its engine now
    store = membership_store.get()
    # Tagged first: a run killed right after claiming is still one the reconciler looks at.
    context.instance.add_run_tags(context.run.run_id, {GUARD_TAG: CLAIMING})
    claim = store.claim(
        environment_key, owner=context.run.run_id, force=config.force, quick=config.mode != "full"
    )
    if not isinstance(claim, Claim):
        skip_by_guard(context, claim)
        return
    context.instance.add_run_tags(context.run.run_id, {GUARD_TAG: CLAIMED})
    log.info(
        "segment_membership.backfill.claimed",
        environment=environment_key,
        run_id=context.run.run_id,
        forced=config.force,
    )
    with LeaseHeartbeat(store, claim), flagsmith.open() as source:
        plan = plan_backfill(
            source,
            store,
            claim,
            config.shard_identities,
            mode=RefreshMode(config.mode),
            incremental_shard_identities=config.incremental_shard_identities,
            max_changed_share=config.incremental_max_changed_share,
            delta_max_share=config.delta_max_share,
        )
    display_name = plan.environment.display_name
    context.instance.add_run_tags(context.run.run_id, {ENVIRONMENT_NAME_TAG: display_name[:255]})
    log.info(
        "segment_membership.backfill.planned",
        environment=environment_key,
        environment_name=display_name,
        run_id=context.run.run_id,
        version=plan.version_id,
        identities=plan.identity_count,
        shards=len(plan.shards),
        shard_identities=plan.shard_identities,
        mode=plan.mode.value,
    )
    yield dg.Output(
        plan,
        "plan",
        metadata={
            "version": plan.version_id,
            "mode": plan.mode.value,
            "mode_reason": plan.mode_reason,
            "identities": plan.identity_count,
            "segments_evaluated": len(plan.segments),
            "segments_reused": len(plan.reused_segments),
            "identities_to_reevaluate": len(plan.delta_identities) if plan.delta else None,
            "segments_to_rebuild": len(plan.rebuilt_segments) if plan.delta else None,
            "shards": len(plan.shards),
            "shard_identities": plan.shard_identities,
        },
    )
    for spec in plan.shards:
        yield dg.DynamicOutput(
            ShardTask(plan, spec), mapping_key=spec.mapping_key, output_name="shards"
        )


@dg.op(
    out=dg.Out(dg.Any, io_manager_key=STAGING_IO_MANAGER),  # ShardOutcome or DeltaOutcome
    description="One shard: reads its identity-id range, evaluates the planned segments, audits "
    "its share of the sample against flag-engine; its bitmaps are staged into the shadow "
    "version. A delta backfill's one step reads only the changed identities, evaluates every "
    "segment for them, and writes only the chunks holding a changed bit (segments edited since "
    "the published version are evaluated on every identity in the same step).",
)
def backfill_shard(
    context: dg.OpExecutionContext,
    config: ShardConfig,
    task: ShardTask,
    flagsmith: FlagsmithSourceResource,
    membership_store: MembershipStoreResource,
) -> ShardOutcome | DeltaOutcome:
    store, plan, shard = membership_store.get(), task.plan, task.spec
    log.info(
        "segment_membership.backfill.shard_started",
        environment=plan.environment_key,
        run_id=context.run.run_id,
        shard=shard.index,
        first_id=shard.first_id,
        last_id=shard.last_id,
        identities=shard.identities,
        attempt=context.retry_number + 1,
        pid=os.getpid(),  # the step's process: what an operator (or a test) would kill
    )
    with LeaseHeartbeat(store, plan.claim), flagsmith.open() as source:
        if plan.delta:  # one step: the changed identities, on every segment
            base = plan.base_version_id
            return compute_delta(
                source,
                plan,
                audit_sample_size=config.audit_sample_size,
                audit_seed=config.audit_seed,
                base_universe=None if base is None else lambda: store.universe(base),
            )
        return compute_shard(
            source,
            plan,
            shard,
            audit_sample_size=config.audit_sample_size,
            audit_seed=config.audit_seed,
            expected_identities=expected_identities(store, plan, shard),
        )


@dg.op(
    # Every shard step must have finished; their reports are read in one query, not loaded.
    ins={"staged": dg.In(dg.Nothing)},
    out={
        # Not required: a launch that does not select the check (the UI's button) still audits,
        # but Dagster then yields no output for it.
        "audit": dg.Out(dg.Nothing, is_required=False),
        "bitmaps": dg.Out(StagedVersion, io_manager_key=PUBLISHING_IO_MANAGER),
    },
    description="Combines the shards' audits into the asset check (a disagreement fails the "
    "backfill before the flip) and hands the staged version to the publishing IO manager.",
)
def publish_version(
    context: dg.OpExecutionContext,
    plan: StagedPlan,
    membership_store: MembershipStoreResource,
) -> Iterator[dg.Output[StagedVersion] | dg.AssetCheckResult]:
    store = membership_store.get()
    reports = store.shard_reports(plan.version_id)  # all of them, as sealing will check
    audit = combined_audit(reports)
    yield dg.AssetCheckResult(
        asset_key=BITMAPS,
        check_name=AUDIT_CHECK,
        passed=audit.passed,
        metadata={
            "identities": audit.identities,
            "decisions": audit.pairs,
            "mismatches": audit.mismatch_count,
            "shards": len(reports),
            "summary": audit.describe(),
        },
    )
    if not audit.passed:
        raise AuditFailed(audit.describe())
    with LeaseHeartbeat(store, plan.claim):
        yield dg.Output(StagedVersion(plan, reports), "bitmaps")


def bitmaps_asset(
    shard_identities: int = DEFAULT_SHARD_IDENTITIES, shard_retries: int = DEFAULT_SHARD_RETRIES
) -> dg.AssetsDefinition:
    """The asset with a deployment's shape: its run config's default shard size, and how often
    a failed shard step is retried (a new attempt replaces what the failed one staged)."""

    default_shard_identities = shard_identities  # (the class body cannot see the argument)

    class DeploymentBackfillConfig(BackfillConfig):
        shard_identities: int = Field(
            default=default_shard_identities, description=SHARD_IDENTITIES_HELP
        )

    retried_shard = backfill_shard.with_retry_policy(
        dg.RetryPolicy(max_retries=shard_retries, delay=1)
    )

    @dg.graph_multi_asset(
        name="segment_membership_bitmaps",
        group_name="membership",  # (an AssetOut's own group_name is not applied to a graph's)
        outs={
            "segment_membership_bitmaps": dg.AssetOut(
                key=BITMAPS,
                io_manager_key=PUBLISHING_IO_MANAGER,
                is_required=False,  # a run that loses the claim publishes nothing
                kinds={"python", "sql"},
                description="Roaring bitmaps of identity ids, one per segment, for one Flagsmith "
                "environment; computed in shards of consecutive identity ids, published as one "
                "version with one flip.",
            )
        },
        partitions_def=environments_partitions,
        # Lets the run that loses the claim end without the asset or its check (not subsetting).
        can_subset=True,
        check_specs=[
            dg.AssetCheckSpec(
                AUDIT_CHECK,
                asset=BITMAPS,
                description="A sample of identities (spread over the shards) re-evaluated by "
                "flag-engine agrees with the bitmaps; checked before the flip, and a disagreement "
                "fails the backfill.",
            )
        ],
        config=dg.ConfigMapping(
            config_schema=DeploymentBackfillConfig.to_config_schema(), config_fn=_inner_config
        ),
        hooks={fail_backfill_on_step_failure},
    )
    def segment_membership_bitmaps() -> dict[str, Any]:
        plan, shards = plan_shards()
        staged = shards.map(retried_shard).collect()
        published = publish_version(plan=plan, staged=staged)
        return {
            "segment_membership_bitmaps": published.bitmaps,
            f"segment_membership_bitmaps_{AUDIT_CHECK}": published.audit,
        }

    return segment_membership_bitmaps


segment_membership_bitmaps = bitmaps_asset()  # with the embedded defaults


@dg.asset(
    partitions_def=environments_partitions,
    ins={"published": dg.AssetIn(key=BITMAPS)},
    group_name="membership",
    kinds={"python"},
    description="Members per segment of the published version, read back through the IO manager.",
)
def segment_membership_counts(
    context: dg.AssetExecutionContext, published: PublishedMembership
) -> dg.MaterializeResult:
    counts = published.segment_counts()
    return dg.MaterializeResult(
        metadata={
            "version": published.version_id,
            "identities": published.identity_count,
            "segments": len(counts),
            "largest_segment": max(counts.values(), default=0),
            "counts": dg.MetadataValue.json(counts),
        }
    )
