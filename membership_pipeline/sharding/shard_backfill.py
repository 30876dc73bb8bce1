"""A sharded backfill, step by step: plan the shards, compute one shard, stage it into the
shadow version, combine the shards' audits. No Dagster here: the ops in ``defs/membership`` call
these on whichever executor runs them, and the tests call them directly."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pyroaring import BitMap

from membership_pipeline.evaluation import reads_identifiers, referenced_trait_keys
from membership_pipeline.evaluation.reference_audit import AuditReport, audit_against_flag_engine
from membership_pipeline.evaluation.tuning import DEFAULT_TUNING, EvaluationTuning
from membership_pipeline.process_memory import peak_rss_mb
from membership_pipeline.sharding.refresh_mode import (
    DEFAULT_MAX_CHANGED_SHARE,
    RefreshMode,
    SourceMarks,
    decide_refresh,
    environment_digest,
)
from membership_pipeline.sharding.shard_plan import ShardSpec, plan_shards
from membership_pipeline.sources.flagsmith_source import (
    EnvironmentInfo,
    FlagsmithSource,
    IdentityPlan,
)
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
# An incremental shard evaluates a few segments: it holds far more identities than a full one
# in the same memory (ids, identifiers and the edited segments' traits).
DEFAULT_INCREMENTAL_SHARD_IDENTITIES = 4_000_000


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


class IdentitiesChanged(RuntimeError):
    """An incremental shard read other identities than the base version holds (they changed
    after planning): nothing is published; the next backfill is a full one."""


def plan_backfill(
    source: FlagsmithSource,
    store: MembershipStore,
    held: Claim,
    shard_identities: int,
    *,
    mode: RefreshMode = RefreshMode.FULL,
    incremental_shard_identities: int = DEFAULT_INCREMENTAL_SHARD_IDENTITIES,
    max_changed_share: float = DEFAULT_MAX_CHANGED_SHARE,
) -> StagedPlan:
    """Read the environment's segments and id boundaries in one snapshot, decide full or
    incremental (see refresh_mode.py), plan the shards and record the plan with a new shadow
    version. An incremental plan evaluates only the new and edited segments, so its shards
    hold more identities (``incremental_shard_identities``)."""
    key = held.environment_key
    base = store.refresh_base(key) if mode is RefreshMode.INCREMENTAL else None
    traits_after = None
    if base is not None and base.marks is not None:
        traits_after = base.marks.max_trait_id or 0
    every = incremental_shard_identities if mode is RefreshMode.INCREMENTAL else shard_identities
    found = source.plan_identities(key, every, traits_after=traits_after)
    decision = decide_refresh(
        mode,
        base,
        source_marks(found),
        found.new_traits,
        found.segments,
        max_changed_share=max_changed_share,
    )
    if decision.mode is RefreshMode.FULL and every != shard_identities:
        every = shard_identities  # escalated: plan again in full-sized shards
        found = source.plan_identities(key, every)
    log.info(
        "segment_membership.backfill.refresh_decided",
        environment=key,
        requested=mode.value,
        mode=decision.mode.value,
        reason=decision.reason,
        base_version=decision.base_version_id,
        reevaluated=len(decision.reevaluate),
        reused=len(decision.reuse),
        dropped=len(decision.drop),
    )
    evaluated = set(decision.reevaluate)
    specs = plan_shards(found.boundaries, found.identity_count, found.max_id, every)
    return store.stage_plan(
        held,
        as_of=found.as_of,
        environment_info=dataclasses.asdict(found.info),
        display_name=found.info.display_name,
        segments=[s for s in found.segments if str(s["key"]) in evaluated]
        if decision.mode is RefreshMode.INCREMENTAL
        else found.segments,
        identity_count=found.identity_count,
        shard_identities=every,
        shards=specs,
        refresh=decision,
        marks=source_marks(found),
    )


def source_marks(found: IdentityPlan) -> SourceMarks:
    info = found.info
    return SourceMarks(
        identity_count=found.identity_count,
        max_identity_id=found.max_id,
        max_trait_id=found.max_trait_id,
        environment_digest=environment_digest(info.api_key, info.name, info.use_composite_hash_key),
    )


def compute_shard(
    source: FlagsmithSource,
    plan: StagedPlan,
    spec: ShardSpec,
    *,
    audit_sample_size: int,
    audit_seed: int,
    expected_identities: BitMap | None = None,
) -> ShardOutcome:
    """Read the shard's id range, evaluate the plan's segments on it, and audit its share of the
    sample against flag-engine. ``expected_identities``: an incremental shard's ids in the base
    version; reading others raises ``IdentitiesChanged``."""
    # The engine (numba kernels) loads here, in the step's process, not with the definitions.
    from membership_pipeline.evaluation import engine

    info = EnvironmentInfo(**plan.environment)
    context = {"key": info.api_key, "name": info.name}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    trait_keys = referenced_trait_keys(plan.segments)  # no other trait changes an answer
    tuning = tuning_for(plan)
    identifiers = reads_identifiers(plan.segments)  # else every answer is the same without
    # An incremental shard whose segments read no identifier takes its identity ids from the
    # base version and checks them against the source's count, largest and sum of ids.
    known = None
    if not identifiers and expected_identities is not None:
        known = np.asarray(expected_identities.to_array(), dtype=np.int64)
    read = source.read_identity_range(
        info,
        spec.first_id,
        spec.last_id,
        trait_keys,
        parallel_reads=tuning.read_connections,
        identifiers=identifiers,
        known_ids=known,
    )
    if known is not None and read.checksum != checksum_of(known):
        raise IdentitiesChanged(
            f"shard {spec.index} (ids {spec.first_id}..{spec.last_id}) of {info.api_key!r}: "
            f"the source holds {read.checksum[0] if read.checksum else '?'} identities there, "
            f"version {plan.base_version_id} {len(known)} (or other ids); this incremental "
            "backfill shares its bitmaps with that version: run a full backfill"
        )
    seconds["read"] = time.perf_counter() - started
    started = time.perf_counter()
    result = engine.evaluate_environment(
        context, read.identities, read.traits, plan.segments, tuning
    )
    seconds["evaluate"] = time.perf_counter() - started
    if expected_identities is not None and expected_identities != result.universe:
        added = len(result.universe - expected_identities)
        removed = len(expected_identities - result.universe)
        raise IdentitiesChanged(
            f"shard {spec.index} (ids {spec.first_id}..{spec.last_id}) of "
            f"{info.api_key!r}: {added} identities added and {removed} removed since version "
            f"{plan.base_version_id}, which this incremental backfill shares bitmaps with; "
            "run a full backfill"
        )
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


def checksum_of(ids: np.ndarray) -> tuple[int, int, int]:
    """Count, largest (-1: none) and sum of sorted ``ids``: what the source reports for a
    range."""
    if not len(ids):
        return 0, -1, 0
    return len(ids), int(ids[-1]), int(ids.sum())


def expected_identities(store: MembershipStore, plan: StagedPlan, spec: ShardSpec) -> BitMap | None:
    """An incremental shard's identities as its base version holds them (None when full)."""
    if not plan.incremental or plan.base_version_id is None:
        return None
    return store.universe_between(plan.base_version_id, spec.first_id, spec.last_id)


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
    stage_membership_result(writer, outcome.result, with_universe=not outcome.plan.incremental)
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
