"""An identity-delta backfill: plan it from the store's pending identities, compute it (read only
those identities and their traits, evaluate every live segment for them, audit them against
flag-engine), and stage it (``storage.delta_versions``: only the chunks holding a changed bit are
written). An identity's membership depends only on its own traits, identifier and environment,
so the base's answers for every other identity stay exact."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyroaring import BitMap

from membership_pipeline.backfill.shards import audit_share, tuning_for
from membership_pipeline.evaluation import reads_identifiers, referenced_trait_keys
from membership_pipeline.evaluation.reference_audit import AuditReport, audit_against_flag_engine
from membership_pipeline.model.backfill_plan import BackfillPlan
from membership_pipeline.model.refresh_mode import (
    DEFAULT_DELTA_MAX_SHARE,
    RefreshDecision,
    RefreshMode,
    SourceMarks,
    decide_delta,
    environment_digest,
)
from membership_pipeline.model.shard_plan import ShardSpec
from membership_pipeline.process_memory import peak_rss_mb
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import Claim, MembershipStore, StagedPlan
from membership_pipeline.storage.delta_versions import DeltaAnswers
from membership_pipeline.storage.pending_identities import PendingIdentities
from membership_pipeline.structured_logging import get_logger

log = get_logger("backfill")
MIN_DELTA_AUDIT = 20


@dataclass
class DeltaOutcome:
    """What a delta step computed, before it is staged."""

    plan: StagedPlan
    answers: DeltaAnswers
    audit: AuditReport
    seconds: dict[str, float]
    trait_rows: int
    trait_keys: tuple[str, ...]


def plan_delta(
    source: FlagsmithSource,
    store: MembershipStore,
    held: Claim,
    pending: PendingIdentities,
    *,
    max_share: float = DEFAULT_DELTA_MAX_SHARE,
) -> tuple[RefreshDecision, StagedPlan | None]:
    """A delta plan of the ``pending`` identities (read from the store before this snapshot of
    the source), or the decision to run a full backfill instead (then no plan)."""
    key = held.environment_key
    base = store.refresh_base(key)
    state = source.environment_state(key)
    info = state.info
    digest = environment_digest(info.api_key, info.name, info.use_composite_hash_key)
    decision = decide_delta(base, digest, state.segments, len(pending.ids), max_share=max_share)
    if decision.mode is not RefreshMode.DELTA:
        return decision, None
    assert base is not None and base.marks is not None
    ids = pending.ids
    spec = ShardSpec(0, ids.min() if ids else 0, ids.max() if ids else -1, len(ids))
    plan = BackfillPlan(
        environment=info,
        as_of=state.as_of,
        segments=state.segments,
        identity_count=base.marks.identity_count,  # the base's; the sealed version counts
        shard_identities=max(len(ids), 1),
        shards=(spec,),
        mode=RefreshMode.DELTA,
        mode_reason=decision.reason,
        base_version_id=decision.base_version_id,
        marks=SourceMarks(
            base.marks.identity_count, base.marks.max_identity_id, state.max_trait_id, digest
        ),
        pending_position=pending.position,
        delta_identities=tuple(ids),
    )
    return decision, store.stage_plan(held, plan)


def compute_delta(
    source: FlagsmithSource, plan: StagedPlan, *, audit_sample_size: int, audit_seed: int
) -> DeltaOutcome:
    from membership_pipeline.evaluation import engine  # the kernels load in the step's process

    info = plan.environment
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    trait_keys = referenced_trait_keys(plan.segments)
    changed = BitMap(plan.delta_identities)
    read = source.read_identities(
        info,
        np.asarray(changed.to_array(), dtype=np.int64),
        trait_keys,
        identifiers=reads_identifiers(plan.segments),
    )
    seconds["read"] = time.perf_counter() - started
    started = time.perf_counter()
    result = engine.evaluate_environment(
        info.context, read.identities, read.traits, plan.segments, tuning_for(plan)
    )
    seconds["evaluate"] = time.perf_counter() - started
    started = time.perf_counter()
    audit = audit_against_flag_engine(
        info.context,
        read.identities,
        read.traits,
        plan.segments,
        result.segments,
        sample_size=delta_audit_size(audit_sample_size, len(result.universe), plan.identity_count),
        seed=audit_seed,
    )
    seconds["audit"] = time.perf_counter() - started
    answers = DeltaAnswers(
        changed=changed,
        universe=result.universe,
        segments=result.segments,
        names=result.segment_names,
        failures={k: (f.reason_code, str(f)) for k, f in result.failures.items()},
    )
    return DeltaOutcome(plan, answers, audit, seconds, len(read.traits), tuple(sorted(trait_keys)))


def delta_audit_size(sample_size: int, changed: int, environment: int) -> int:
    """A full backfill audits ``sample_size`` identities of the environment; a delta audits its
    share of that for the identities it re-evaluates (as a shard does), and at least
    ``MIN_DELTA_AUDIT`` of them: flag-engine re-evaluates each identity on every segment, about
    5 ms per identity with 300 segments, which would otherwise be most of a small delta's time."""
    return min(changed, max(audit_share(sample_size, changed, environment), MIN_DELTA_AUDIT))


def stage_delta(store: MembershipStore, outcome: DeltaOutcome) -> dict[str, Any]:
    """Write the delta version (one transaction: a retried step replaces an earlier attempt's
    rows) with the step's report; returns the report."""
    started = time.perf_counter()
    audit = outcome.audit
    report: dict[str, Any] = {
        "identities": len(outcome.answers.universe),
        "identities_reevaluated": len(outcome.answers.changed),
        "trait_rows": outcome.trait_rows,
        "trait_keys_read": list(outcome.trait_keys),
        "segments": len(outcome.answers.segments),
        "failed_segments": len(outcome.answers.failures),
        "audit": {
            "identities": audit.identities,
            "pairs": audit.pairs,
            "mismatch_count": audit.mismatch_count,
            "mismatches": [list(m) for m in audit.mismatches[:20]],
        },
        "peak_rss_mb": round(peak_rss_mb()),
    }
    report["seconds"] = {k: round(v, 3) for k, v in outcome.seconds.items()}
    totals = store.write_delta(outcome.plan, outcome.answers, report)  # records "write" too
    report["seconds"]["write"] = round(time.perf_counter() - started, 3)
    report["delta"] = totals.as_dict()
    return report
