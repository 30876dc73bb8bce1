"""``segment_membership_bitmaps``: one partition per environment; materializing a partition is
that environment's backfill, sharded by identity-id range into Dagster steps:

    plan_shards ──► backfill_shard[shard_0] ─┐
                ├─► backfill_shard[shard_1] ─┼─► publish_version ──► (IO manager: seal, flip)
                └─► backfill_shard[...]     ─┘

- ``plan_shards`` claims the environment (the guard), reads its segments and id boundaries in
  one snapshot, decides full or incremental (config ``mode``; see sharding/refresh_mode.py) and
  records the plan with a new shadow version (an incremental plan holds only the new and edited
  segments, and which of the published version's bitmaps the new version shares);
- each ``backfill_shard`` reads its id range, evaluates the planned segments, audits its share
  of the sample against flag-engine; its output is staged into the shadow version by
  ``ShadowStagingIOManager`` (retried attempts replace earlier ones);
- ``publish_version`` reports the combined audit as the asset check and hands the staged version
  to ``PublishingIOManager``, which seals it and flips the pointer: one version, one flip.

A graph-backed asset with a dynamic fan-out is Dagster's own construct for this: one
materialization of one partition, one step per shard that any executor (multiprocess, Celery,
Kubernetes) schedules, retries and shows in the UI.
"""

import os
from collections.abc import Iterator
from typing import Any

import dagster as dg

from membership_pipeline.defs.membership.backfill_events import (
    CLAIMED,
    CLAIMING,
    ENVIRONMENT_NAME_TAG,
    GUARD_TAG,
    fail_backfill_on_step_failure,
    log,
    skip_by_guard,
)
from membership_pipeline.defs.membership.io_manager import StagedVersion
from membership_pipeline.defs.membership.lease import LeaseHeartbeat
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import (
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.step_server import preload_in_background
from membership_pipeline.sharding.refresh_mode import DEFAULT_MAX_CHANGED_SHARE, RefreshMode
from membership_pipeline.sharding.shard_backfill import (
    DEFAULT_INCREMENTAL_SHARD_IDENTITIES,
    ShardOutcome,
    ShardTask,
    combined_audit,
    compute_shard,
    expected_identities,
    plan_backfill,
)
from membership_pipeline.sharding.shard_plan import shard_identities_from_environment
from membership_pipeline.sources.flagsmith_source import EnvironmentInfo
from membership_pipeline.storage import Claim, PublishedMembership, StagedPlan

BITMAPS = dg.AssetKey("segment_membership_bitmaps")
AUDIT_CHECK = "agrees_with_flag_engine"
# The steps' values go through the default IO manager, which is the store-backed
# ShadowStagingIOManager (see definitions.py): nothing is pickled to a local disk, so any host runs
# any step.
STAGING_IO_MANAGER = "io_manager"
# A shard step that fails is retried this many times (a new attempt replaces what the failed one
# staged) before the backfill fails.
SHARD_RETRIES = int(os.environ.get("MEMBERSHIP_SHARD_RETRIES", "2"))


class AuditFailed(RuntimeError):
    """The bitmaps disagree with flag-engine on the audited sample: nothing is published."""


class BackfillConfig(dg.Config):
    force: bool = False  # skip the cooldown (never the guard against a running backfill)
    # "incremental": re-evaluate only new and edited segments and share the published version's
    # other bitmaps, when nothing but segment definitions changed (else it runs as "full").
    mode: str = RefreshMode.FULL.value
    # Identities per shard of an incremental backfill (it evaluates a few segments).
    incremental_shard_identities: int = DEFAULT_INCREMENTAL_SHARD_IDENTITIES
    # More than this share of the segments changed: a full backfill instead.
    incremental_max_changed_share: float = DEFAULT_MAX_CHANGED_SHARE
    audit_sample_size: int = 200  # identities re-evaluated by flag-engine before the flip
    audit_seed: int = 0
    # Identities per shard step (default: MEMBERSHIP_SHARD_IDENTITIES, else 500,000).
    shard_identities: int = shard_identities_from_environment()


class ShardConfig(dg.Config):
    audit_sample_size: int = 200
    audit_seed: int = 0


def refresh_mode(value: str) -> RefreshMode:
    try:
        return RefreshMode(value)
    except ValueError:
        known = ", ".join(m.value for m in RefreshMode)
        raise dg.Failure(f"unknown backfill mode {value!r}: use one of {known}") from None


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
    mode = refresh_mode(config.mode)
    if context.job_def.executor_def.name == "in_process":
        preload_in_background()  # the shard step runs next in this process: load its engine now
    store = membership_store.get()
    # Tagged first: a run killed right after claiming is still one the reconciler looks at.
    context.instance.add_run_tags(context.run.run_id, {GUARD_TAG: CLAIMING})
    claim = store.claim(environment_key, owner=context.run.run_id, force=config.force)
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
    with LeaseHeartbeat(store, claim):
        source = flagsmith.open()
        try:
            plan = plan_backfill(
                source,
                store,
                claim,
                config.shard_identities,
                mode=mode,
                incremental_shard_identities=config.incremental_shard_identities,
                max_changed_share=config.incremental_max_changed_share,
            )
        finally:
            source.close()
    display_name = EnvironmentInfo(**plan.environment).display_name
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
        mode=plan.mode,
    )
    yield dg.Output(
        plan,
        "plan",
        metadata={
            "version": plan.version_id,
            "mode": plan.mode,
            "mode_reason": plan.mode_reason,
            "identities": plan.identity_count,
            "segments_evaluated": len(plan.segments),
            "segments_reused": len(plan.reused_segments),
            "shards": len(plan.shards),
            "shard_identities": plan.shard_identities,
        },
    )
    for spec in plan.shards:
        yield dg.DynamicOutput(
            ShardTask(plan, spec), mapping_key=spec.mapping_key, output_name="shards"
        )


@dg.op(
    out=dg.Out(ShardOutcome, io_manager_key=STAGING_IO_MANAGER),
    retry_policy=dg.RetryPolicy(max_retries=SHARD_RETRIES, delay=1),
    description="One shard: reads its identity-id range, evaluates the planned segments, audits "
    "its share of the sample against flag-engine; its bitmaps are staged into the shadow "
    "version.",
)
def backfill_shard(
    context: dg.OpExecutionContext,
    config: ShardConfig,
    task: ShardTask,
    flagsmith: FlagsmithSourceResource,
    membership_store: MembershipStoreResource,
) -> ShardOutcome:
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
    with LeaseHeartbeat(store, plan.claim):
        source = flagsmith.open()
        try:
            return compute_shard(
                source,
                plan,
                shard,
                audit_sample_size=config.audit_sample_size,
                audit_seed=config.audit_seed,
                expected_identities=expected_identities(store, plan, shard),
            )
        finally:
            source.close()


@dg.op(
    # Every shard step must have finished; their reports are read in one query, not loaded.
    ins={"staged": dg.In(dg.Nothing)},
    out={
        # Not required: a launch that does not select the check (the UI's button) still audits,
        # but Dagster then yields no output for it.
        "audit": dg.Out(io_manager_key=STAGING_IO_MANAGER, is_required=False),
        "bitmaps": dg.Out(StagedVersion, io_manager_key="membership_io_manager"),
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


@dg.graph_multi_asset(
    name="segment_membership_bitmaps",
    group_name="membership",  # (an AssetOut's own group_name is not applied to a graph's)
    outs={
        "segment_membership_bitmaps": dg.AssetOut(
            key=BITMAPS,
            io_manager_key="membership_io_manager",
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
        config_schema=BackfillConfig.to_config_schema(), config_fn=_inner_config
    ),
    hooks={fail_backfill_on_step_failure},
)
def segment_membership_bitmaps() -> dict[str, Any]:
    plan, shards = plan_shards()
    staged = shards.map(backfill_shard).collect()
    published = publish_version(plan=plan, staged=staged)
    return {
        "segment_membership_bitmaps": published.bitmaps,
        f"segment_membership_bitmaps_{AUDIT_CHECK}": published.audit,
    }


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
