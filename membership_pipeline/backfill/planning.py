"""Planning a backfill: read the environment's segments and id boundaries in one snapshot, decide
full or incremental (``model.refresh_mode``), cut the shards (``model.shard_plan``) and record
the plan with a new shadow version."""

from __future__ import annotations

from membership_pipeline.backfill.delta import plan_delta
from membership_pipeline.model.backfill_plan import BackfillPlan
from membership_pipeline.model.refresh_mode import (
    DEFAULT_DELTA_MAX_SHARE,
    DEFAULT_MAX_CHANGED_SHARE,
    RefreshDecision,
    RefreshMode,
    SourceMarks,
    decide_refresh,
    environment_digest,
)
from membership_pipeline.model.shard_plan import DEFAULT_INCREMENTAL_SHARD_IDENTITIES, plan_shards
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.sources.identity_planner import IdentityPlan
from membership_pipeline.storage import Claim, MembershipStore, StagedPlan
from membership_pipeline.structured_logging import get_logger

log = get_logger("backfill")


def plan_backfill(
    source: FlagsmithSource,
    store: MembershipStore,
    held: Claim,
    shard_identities: int,
    *,
    mode: RefreshMode = RefreshMode.FULL,
    incremental_shard_identities: int = DEFAULT_INCREMENTAL_SHARD_IDENTITIES,
    max_changed_share: float = DEFAULT_MAX_CHANGED_SHARE,
    delta_max_share: float = DEFAULT_DELTA_MAX_SHARE,
) -> StagedPlan:
    """An incremental plan evaluates only the new and edited segments, so its shards hold more
    identities (``incremental_shard_identities``); escalated to full, it plans again in shards
    of ``shard_identities``. A delta plan re-evaluates the identities captured as changed
    (``backfill.delta``); escalated to full, it plans as a full one.

    The pending identities are read before the source's snapshot is taken: every change
    recorded by then was committed before it, so a full or delta plan covers them (and its
    publish clears them); an incremental plan shares bitmaps that may predate them, so while any
    are pending it runs as a delta with its segment edits (else as full)."""
    key = held.environment_key
    pending = store.pending_identities(key)
    escalated = None  # why a requested delta or incremental runs as full
    if mode is RefreshMode.DELTA or (mode is RefreshMode.INCREMENTAL and pending.ids):
        # Segment edits with changed identities pending: one delta does both (the edited
        # segments on every identity, the changed identities on every segment).
        decision, staged = plan_delta(
            source,
            store,
            held,
            pending,
            max_share=delta_max_share,
            max_changed_share=max_changed_share,
        )
        _log_decision(key, mode, decision)
        if staged is not None:
            return staged
        mode, escalated = RefreshMode.FULL, decision.reason
    base = store.refresh_base(key) if mode is RefreshMode.INCREMENTAL else None
    traits_after = None
    if base is not None and base.marks is not None:
        traits_after = base.marks.max_trait_id or 0
    every = incremental_shard_identities if mode is RefreshMode.INCREMENTAL else shard_identities
    found = source.plan_identities(key, every, traits_after=traits_after)
    marks = source_marks(found)
    decision = decide_refresh(
        mode, base, marks, found.new_traits, found.segments, max_changed_share=max_changed_share
    )
    if decision.mode is RefreshMode.FULL and every != shard_identities:
        every = shard_identities  # escalated: plan again in full-sized shards
        found = source.plan_identities(key, every)
        marks = source_marks(found)
    _log_decision(key, mode, decision)
    incremental = decision.mode is RefreshMode.INCREMENTAL
    evaluated = set(decision.reevaluate)
    plan = BackfillPlan(
        environment=found.info,
        as_of=found.as_of,
        segments=[s for s in found.segments if str(s["key"]) in evaluated]
        if incremental
        else found.segments,
        identity_count=found.identity_count,
        shard_identities=every,
        shards=plan_shards(found.boundaries, found.identity_count, found.max_id, every),
        mode=decision.mode,
        mode_reason=escalated or decision.reason,
        base_version_id=decision.base_version_id,
        reused_segments=tuple(decision.reuse) if incremental else (),
        dropped_segments=tuple(decision.drop) if incremental else (),
        marks=marks,
        pending_position=None if incremental else pending.position,
    )
    return store.stage_plan(held, plan)


def _log_decision(key: str, requested: RefreshMode, decision: RefreshDecision) -> None:
    log.info(
        "segment_membership.backfill.refresh_decided",
        environment=key,
        requested=requested.value,
        mode=decision.mode.value,
        reason=decision.reason,
        base_version=decision.base_version_id,
        reevaluated=len(decision.reevaluate),
        reused=len(decision.reuse),
        dropped=len(decision.drop),
    )


def source_marks(found: IdentityPlan) -> SourceMarks:
    info = found.info
    return SourceMarks(
        identity_count=found.identity_count,
        max_identity_id=found.max_id,
        max_trait_id=found.max_trait_id,
        environment_digest=environment_digest(info.api_key, info.name, info.use_composite_hash_key),
        snapshot_xmin=found.snapshot_xmin,
    )
