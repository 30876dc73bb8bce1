"""A sharded backfill, step by step: plan the shards, compute one shard, stage it into the
shadow version, combine the shards' audits. No Dagster here: the ops in ``defs/membership`` call
these on whichever executor runs them, and the tests call them directly."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from membership_pipeline.evaluation import referenced_trait_keys
from membership_pipeline.evaluation.reference_audit import AuditReport, audit_against_flag_engine
from membership_pipeline.evaluation.tuning import DEFAULT_TUNING, EvaluationTuning
from membership_pipeline.process_memory import peak_rss_mb
from membership_pipeline.sharding.shard_plan import ShardSpec, plan_shards
from membership_pipeline.sources.flagsmith_source import EnvironmentInfo, FlagsmithSource
from membership_pipeline.storage import (
    Claim,
    MembershipStore,
    ShardReport,
    StagedPlan,
    stage_membership_result,
)
from membership_pipeline.structured_logging import get_logger

if TYPE_CHECKING:
    from membership_pipeline.evaluation import MembershipResult

log = get_logger("backfill")
MISMATCHES_KEPT = 20  # per shard, in its report


@dataclass(frozen=True)
class ShardTask:
    """What a shard step works on: the backfill's plan and its own range."""

    plan: StagedPlan
    spec: ShardSpec


@dataclass
class ShardOutcome:
    """What one shard computed, before it is staged."""

    plan: StagedPlan
    spec: ShardSpec
    result: MembershipResult
    audit: AuditReport
    seconds: dict[str, float]
    trait_rows: int
    unreadable_traits: int
    trait_keys: tuple[str, ...]  # the only keys read: those the segments reference


def plan_backfill(
    source: FlagsmithSource, store: MembershipStore, held: Claim, shard_identities: int
) -> StagedPlan:
    """Read the environment's segments and id boundaries in one snapshot, plan the shards and
    record the plan with a new shadow version."""
    found = source.plan_identities(held.environment_key, shard_identities)
    specs = plan_shards(found.boundaries, found.identity_count, found.max_id, shard_identities)
    return store.stage_plan(
        held,
        as_of=found.as_of,
        environment_info=dataclasses.asdict(found.info),
        segments=found.segments,
        identity_count=found.identity_count,
        shard_identities=shard_identities,
        shards=specs,
    )


def compute_shard(
    source: FlagsmithSource,
    plan: StagedPlan,
    spec: ShardSpec,
    *,
    audit_sample_size: int,
    audit_seed: int,
) -> ShardOutcome:
    """Read the shard's id range, evaluate the plan's segments on it, and audit its share of the
    sample against flag-engine."""
    # The engine (numba kernels) loads here, in the step's process, not with the definitions.
    from membership_pipeline.evaluation import engine

    info = EnvironmentInfo(**plan.environment)
    context = {"key": info.api_key, "name": info.name}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    trait_keys = referenced_trait_keys(plan.segments)  # no other trait changes an answer
    tuning = tuning_for(plan)
    read = source.read_identity_range(
        info, spec.first_id, spec.last_id, trait_keys, parallel_reads=tuning.read_connections
    )
    seconds["read"] = time.perf_counter() - started
    started = time.perf_counter()
    result = engine.evaluate_environment(
        context, read.identities, read.traits, plan.segments, tuning
    )
    seconds["evaluate"] = time.perf_counter() - started
    started = time.perf_counter()
    audit = audit_against_flag_engine(
        context,
        read.identities,
        read.traits,
        plan.segments,
        result.segments,
        sample_size=audit_share(audit_sample_size, spec.identities, plan.identity_count),
        seed=audit_seed + spec.index,
    )
    seconds["audit"] = time.perf_counter() - started
    return ShardOutcome(
        plan,
        spec,
        result,
        audit,
        seconds,
        len(read.traits),
        read.unreadable_traits,
        tuple(sorted(trait_keys)),
    )


def tuning_for(plan: StagedPlan) -> EvaluationTuning:
    """A lone shard reads and hashes on every core; shards of a larger plan use one connection
    and one thread: their sibling steps already keep the other cores busy, and more per shard
    would only contend with them (or exceed a pod's one-CPU request)."""
    if len(plan.shards) == 1:
        return DEFAULT_TUNING
    return dataclasses.replace(DEFAULT_TUNING, hash_threads=1, read_connections=1)


def audit_share(sample_size: int, shard_identities: int, total_identities: int) -> int:
    """A shard audits its share of the backfill's sample (at least one identity if it has any),
    so the whole backfill audits about ``sample_size`` identities however it is sharded."""
    if total_identities <= 0 or shard_identities <= 0 or sample_size <= 0:
        return 0
    return max(1, math.ceil(sample_size * shard_identities / total_identities))


def stage_shard(store: MembershipStore, outcome: ShardOutcome) -> dict[str, Any]:
    """Write the shard's bitmaps into the shadow version (a fresh attempt: whatever an earlier
    attempt wrote is replaced) and record its report; returns the report."""
    started = time.perf_counter()
    writer = store.shard_writer(outcome.plan, outcome.spec)
    stage_membership_result(writer, outcome.result)
    seconds = outcome.seconds | {"write": time.perf_counter() - started}
    audit = outcome.audit
    report = {
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "identities": len(outcome.result.universe),
        "trait_rows": outcome.trait_rows,
        "trait_keys_read": list(outcome.trait_keys),
        "unreadable_traits": outcome.unreadable_traits,
        "segments": len(outcome.result.segments),
        "failed_segments": len(outcome.result.failures),
        "audit": {
            "identities": audit.identities,
            "pairs": audit.pairs,
            "mismatch_count": audit.mismatch_count,
            "mismatches": [list(m) for m in audit.mismatches[:MISMATCHES_KEPT]],
        },
        "attempt": writer.attempt,
        "peak_rss_mb": round(peak_rss_mb()),  # of the step's process (one per step, multiprocess)
    }
    writer.finish(now=store.clock(), report=report)
    return report


def combined_audit(reports: list[ShardReport]) -> AuditReport:
    """The backfill's audit: every shard's share, with the mismatches each shard kept."""
    audits = [r.report.get("audit", {}) for r in reports]
    listed = [(str(s), int(i), bool(e)) for a in audits for s, i, e in a.get("mismatches", [])]
    counted = sum(a.get("mismatch_count", 0) for a in audits)
    return AuditReport(
        identities=sum(a.get("identities", 0) for a in audits),
        pairs=sum(a.get("pairs", 0) for a in audits),
        mismatches=listed,
        unlisted_mismatches=counted - len(listed),
    )
