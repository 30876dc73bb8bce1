"""The backfill's lifecycle events (``segment_membership.backfill.*``) and its failure path,
shared by the asset body and the publishing IO manager."""

from __future__ import annotations

import dagster as dg

from membership_pipeline.storage import Claim, ClaimRefused, MembershipStore
from membership_pipeline.structured_logging import get_logger

log = get_logger("backfill")

GUARD_TAG = "membership/guard"
GUARD_REASON_TAG = "membership/guard_reason"


def fail_backfill(store: MembershipStore, claim: Claim, run_id: str, error: BaseException) -> None:
    """Mark the environment failed (its published version stays) and say so."""
    summary = f"{type(error).__name__}: {error}"
    store.fail(claim, summary)
    log.error(
        "segment_membership.backfill.failed",
        environment=claim.environment_key,
        run_id=run_id,
        error=summary,
        error_type=type(error).__name__,
    )


def skip_by_guard(context: dg.AssetExecutionContext, refused: ClaimRefused) -> None:
    """A run that lost the claim writes nothing and ends visibly as skipped (a run tag)."""
    log.warning(
        "segment_membership.backfill.skipped",
        environment=refused.environment_key,
        run_id=context.run.run_id,
        reason=refused.reason,
        detail=refused.describe(),
    )
    context.instance.add_run_tags(
        context.run.run_id,
        {GUARD_TAG: f"skipped: {refused.reason}", GUARD_REASON_TAG: refused.describe()},
    )
