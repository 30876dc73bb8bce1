"""Planning a backfill: read the environment's segments and id boundaries in one snapshot, decide
full or incremental (``model.refresh_mode``), cut the shards (``model.shard_plan``) and record
the plan with a new shadow version."""

from __future__ import annotations

from membership_pipeline.model.backfill_plan import BackfillPlan
from membership_pipeline.model.refresh_mode import (
    DEFAULT_MAX_CHANGED_SHARE,
    RefreshMode,
    SourceMarks,
    decide_refresh,
    environment_digest,
)
from membership_pipeline.model.shard_plan import plan_shards
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.sources.identity_planner import IdentityPlan
from membership_pipeline.storage import Claim, MembershipStore, StagedPlan
from membership_pipeline.structured_logging import get_logger

log = get_logger("backfill")
# An incremental shard evaluates a few segments: it holds far more identities than a full one
# in the same memory (ids, identifiers and the edited segments' traits).
DEFAULT_INCREMENTAL_SHARD_IDENTITIES = 4_000_000


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
    """An incremental plan evaluates only the new and edited segments, so its shards hold more
    identities (``incremental_shard_identities``); escalated to full, it plans again in shards
    of ``shard_identities``."""
    key = held.environment_key
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
        mode_reason=decision.reason,
        base_version_id=decision.base_version_id,
        reused_segments=tuple(decision.reuse) if incremental else (),
        dropped_segments=tuple(decision.drop) if incremental else (),
        marks=marks,
    )
    return store.stage_plan(held, plan)


def source_marks(found: IdentityPlan) -> SourceMarks:
    info = found.info
    return SourceMarks(
        identity_count=found.identity_count,
        max_identity_id=found.max_id,
        max_trait_id=found.max_trait_id,
        environment_digest=environment_digest(info.api_key, info.name, info.use_composite_hash_key),
    )
