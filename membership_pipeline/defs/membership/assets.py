"""``segment_membership_bitmaps``: one partition per environment; materializing a partition is
that environment's backfill — claim (the guard), read (source), compute (engine), audit against
flag-engine, then the IO manager writes the shadow version and flips the pointer."""

import time
from collections.abc import Iterator

import dagster as dg

from membership_pipeline.defs.membership.backfill_events import fail_backfill, log, skip_by_guard
from membership_pipeline.defs.membership.io_manager import ComputedMembership
from membership_pipeline.defs.membership.lease import LeaseHeartbeat
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import (
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.evaluation import evaluate_environment
from membership_pipeline.evaluation.reference_audit import audit_against_flag_engine
from membership_pipeline.storage import Claim, PublishedMembership

BITMAPS = dg.AssetKey("segment_membership_bitmaps")
AUDIT_CHECK = "agrees_with_flag_engine"


class AuditFailed(RuntimeError):
    """The bitmaps disagree with flag-engine on the audited sample: nothing is published."""


class BackfillConfig(dg.Config):
    force: bool = False  # skip the cooldown (never the guard against a running backfill)
    audit_sample_size: int = 200  # identities re-evaluated by flag-engine before the flip
    audit_seed: int = 0


@dg.multi_asset(
    name="segment_membership_bitmaps",
    outs={
        "segment_membership_bitmaps": dg.AssetOut(
            key=BITMAPS,
            io_manager_key="membership_io_manager",
            is_required=False,  # a run that loses the claim publishes nothing
            group_name="membership",
            kinds={"python", "sql"},
            description="Roaring bitmaps of identity ids, one per segment, for one Flagsmith "
            "environment.",
        )
    },
    partitions_def=environments_partitions,
    # Lets the run that loses the claim end without the asset or its check (not subsetting).
    can_subset=True,
    check_specs=[
        dg.AssetCheckSpec(
            AUDIT_CHECK,
            asset=BITMAPS,
            description="A sample of identities re-evaluated by flag-engine agrees with the "
            "bitmaps; checked before the flip, and a disagreement fails the backfill.",
        )
    ],
)
def segment_membership_bitmaps(
    context: dg.AssetExecutionContext,
    config: BackfillConfig,
    flagsmith: FlagsmithSourceResource,
    membership_store: MembershipStoreResource,
) -> Iterator[dg.Output[ComputedMembership] | dg.AssetCheckResult]:
    environment_key = context.partition_key
    store = membership_store.get()
    claim = store.claim(environment_key, owner=context.run.run_id, force=config.force)
    if not isinstance(claim, Claim):
        skip_by_guard(context, claim)
        return
    log.info(
        "segment_membership.backfill.claimed",
        environment=environment_key,
        run_id=context.run.run_id,
        forced=config.force,
    )
    with LeaseHeartbeat(store, claim) as heartbeat:
        try:
            seconds: dict[str, float] = {}
            started = time.perf_counter()
            source = flagsmith.open()
            try:
                snapshot = source.read_environment(environment_key)
            finally:
                source.close()
            seconds["read"] = time.perf_counter() - started
            started = time.perf_counter()
            result = evaluate_environment(
                snapshot.environment, snapshot.identities, snapshot.traits, snapshot.segments
            )
            seconds["evaluate"] = time.perf_counter() - started
            started = time.perf_counter()
            audit = audit_against_flag_engine(
                snapshot.environment,
                snapshot.identities,
                snapshot.traits,
                snapshot.segments,
                result.segments,
                sample_size=config.audit_sample_size,
                seed=config.audit_seed,
            )
            seconds["audit"] = time.perf_counter() - started
            yield dg.AssetCheckResult(
                check_name=AUDIT_CHECK,
                passed=audit.passed,
                metadata={
                    "identities": audit.identities,
                    "decisions": audit.pairs,
                    "mismatches": len(audit.mismatches),
                    "summary": audit.describe(),
                },
            )
            if not audit.passed:
                raise AuditFailed(audit.describe())
            yield dg.Output(
                ComputedMembership(store, heartbeat.claim, result, snapshot.as_of, seconds),
                output_name="segment_membership_bitmaps",
            )
        except GeneratorExit:
            raise
        except BaseException as error:
            fail_backfill(store, heartbeat.claim, context.run.run_id, error)
            raise


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
