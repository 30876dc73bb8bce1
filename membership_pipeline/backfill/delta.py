"""An identity-delta backfill: plan it from the store's pending identities, compute it (read only
those identities and their traits, evaluate every live segment for them, audit them against
flag-engine), and stage it (``storage.delta_versions``: only the chunks holding a changed bit are
written). An identity's membership depends only on its own traits, identifier and environment,
so the base's answers for every other identity stay exact.

Segments new or edited since the base (an edit that arrived with the trait writes) are evaluated
on every identity in the same step and written whole, and deleted ones left out: one backfill,
one version, does both."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyroaring import BitMap

from membership_pipeline.backfill.shards import audit_share, checksum_of, tuning_for
from membership_pipeline.evaluation import reads_identifiers, referenced_trait_keys
from membership_pipeline.evaluation.reference_audit import AuditReport, audit_against_flag_engine
from membership_pipeline.evaluation.tuning import DEFAULT_TUNING
from membership_pipeline.model.backfill_plan import BackfillPlan
from membership_pipeline.model.refresh_mode import (
    DEFAULT_DELTA_MAX_SHARE,
    DEFAULT_MAX_CHANGED_SHARE,
    RefreshDecision,
    RefreshMode,
    SourceMarks,
    decide_delta,
    environment_digest,
)
from membership_pipeline.model.shard_plan import (
    DEFAULT_INCREMENTAL_SHARD_IDENTITIES,
    ShardSpec,
    boundaries_of,
    plan_shards,
)
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
    max_changed_share: float = DEFAULT_MAX_CHANGED_SHARE,
) -> tuple[RefreshDecision, StagedPlan | None]:
    """A delta plan of the ``pending`` identities (read from the store before this snapshot of
    the source), with the segments edited since the published version, or the decision to run
    a full backfill instead (then no plan)."""
    key = held.environment_key
    base = store.refresh_base(key)
    state = source.environment_state(key)
    info = state.info
    digest = environment_digest(info.api_key, info.name, info.use_composite_hash_key)
    decision = decide_delta(
        base,
        digest,
        state.segments,
        len(pending.ids),
        max_share=max_share,
        max_changed_share=max_changed_share,
    )
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
        rebuilt_segments=decision.rebuild,
        dropped_segments=decision.drop,
    )
    return decision, store.stage_plan(held, plan)


def compute_delta(
    source: FlagsmithSource,
    plan: StagedPlan,
    *,
    audit_sample_size: int,
    audit_seed: int,
    base_universe: Callable[[], BitMap] | None = None,
    rebuild_range_identities: int = DEFAULT_INCREMENTAL_SHARD_IDENTITIES,
) -> DeltaOutcome:
    """The changed identities on every segment; and a plan's new and edited segments on every
    identity (read in ranges of ``rebuild_range_identities``), kept to the identities the
    version holds: ``base_universe`` (the base's ids) without the changed ones, and the changed
    ones as read here."""
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
    segments = dict(result.segments)
    failures = {k: (f.reason_code, str(f)) for k, f in result.failures.items()}
    trait_rows = len(read.traits)
    if plan.rebuilt_segments:
        if base_universe is None:
            raise ValueError("a delta with segment edits needs its base version's universe")
        kept = base_universe() - changed
        rebuilt = _rebuild_segments(
            source,
            plan,
            kept | result.universe,  # the identities this version holds
            audit_sample_size,
            audit_seed,
            rebuild_range_identities,
            seconds,
        )
        trait_rows += rebuilt.trait_rows
        audit = merged_audit(audit, rebuilt.audit)
        for key, members in rebuilt.segments.items():
            segments[key] = ((members - changed) & kept) | result.segments.get(key, BitMap())
        failures |= rebuilt.failures
        for key in rebuilt.failures:
            segments.pop(key, None)
    answers = DeltaAnswers(
        changed=changed,
        universe=result.universe,
        segments=segments,
        names=result.segment_names,
        failures=failures,
        rebuilt=frozenset(plan.rebuilt_segments),
    )
    return DeltaOutcome(plan, answers, audit, seconds, trait_rows, tuple(sorted(trait_keys)))


@dataclass
class _Rebuilt:
    segments: dict[str, BitMap]
    failures: dict[str, tuple[str, str]]
    audit: AuditReport
    trait_rows: int


def _rebuild_segments(
    source: FlagsmithSource,
    plan: StagedPlan,
    holds: BitMap,
    audit_sample_size: int,
    audit_seed: int,
    range_identities: int,
    seconds: dict[str, float],
) -> _Rebuilt:
    """The plan's new and edited segments on every identity the version ``holds``: what an
    incremental backfill's shards do, range after range in this one step (memory grows with a
    range and the segments' bitmaps, not with the environment). Ranges are cut from ``holds``;
    where the segments read no identifier, the source sends only traits, its count, largest and
    sum of ids checked against ``holds`` (an identity created or deleted meanwhile: that range is
    read again whole, and the next delta covers the change)."""
    from membership_pipeline.evaluation import engine

    info = plan.environment
    wanted = set(plan.rebuilt_segments)
    definitions = [s for s in plan.segments if str(s["key"]) in wanted]
    trait_keys = referenced_trait_keys(definitions)
    identifiers = reads_identifiers(definitions)
    started = time.perf_counter()
    ids = np.asarray(holds.to_array(), dtype=np.int64)
    ranges = plan_shards(
        boundaries_of(ids, range_identities),
        len(ids),
        int(ids[-1]) if len(ids) else None,
        range_identities,
    )
    rebuilt = _Rebuilt({key: BitMap() for key in wanted}, {}, AuditReport(0, 0), 0)
    for spec in ranges:
        known = None
        if not identifiers:
            known = ids[
                np.searchsorted(ids, spec.first_id) : np.searchsorted(ids, spec.last_id, "right")
            ]
        read = source.read_identity_range(
            info, spec.first_id, spec.last_id, trait_keys, identifiers=identifiers, known_ids=known
        )
        if known is not None and read.checksum != checksum_of(known):
            read = source.read_identity_range(
                info, spec.first_id, spec.last_id, trait_keys, identifiers=False
            )
        result = engine.evaluate_environment(
            info.context, read.identities, read.traits, definitions, DEFAULT_TUNING
        )
        for key, members in result.segments.items():
            rebuilt.segments[key] |= members
        rebuilt.failures |= {k: (f.reason_code, str(f)) for k, f in result.failures.items()}
        rebuilt.trait_rows += len(read.traits)
        rebuilt.audit = merged_audit(
            rebuilt.audit,
            audit_against_flag_engine(
                info.context,
                read.identities,
                read.traits,
                definitions,
                result.segments,
                sample_size=audit_share(audit_sample_size, spec.identities, len(ids)),
                seed=audit_seed + 1 + spec.index,
            ),
        )
    seconds["rebuild"] = time.perf_counter() - started
    log.info(
        "segment_membership.backfill.segments_rebuilt",
        environment=plan.environment_key,
        version=plan.version_id,
        segments=len(wanted),
        identities=len(ids),
        ranges=len(ranges),
        seconds=round(seconds["rebuild"], 3),
    )
    return rebuilt


def merged_audit(first: AuditReport, second: AuditReport) -> AuditReport:
    return AuditReport(
        first.identities + second.identities,
        first.pairs + second.pairs,
        [*first.mismatches, *second.mismatches],
        first.unlisted_mismatches + second.unlisted_mismatches,
    )


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
        "segments_rebuilt": len(outcome.answers.rebuilt),
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
