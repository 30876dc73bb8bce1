"""A backfill that failed for good: the environment is marked failed (its published version
stays, the shadow is discarded) and ``segment_membership.backfill.failed`` says where and why."""

from __future__ import annotations

from membership_pipeline.storage import Claim, MembershipStore
from membership_pipeline.structured_logging import get_logger

log = get_logger("backfill")


def fail_backfill(
    store: MembershipStore, claim: Claim, run_id: str, error: BaseException, step: str | None
) -> None:
    """Mark the environment failed (its published version stays, the shadow is discarded) and
    say so; a step failing after the claim already ended (a sibling shard failed first) says
    that instead."""
    summary = f"{type(error).__name__}: {error}"
    where = f"step {step}: " if step else ""
    if store.fail(claim, f"{where}{summary}"):
        log.error(
            "segment_membership.backfill.failed",
            environment=claim.environment_key,
            run_id=run_id,
            step=step,
            error=summary,
            error_type=type(error).__name__,
        )
    else:
        log.warning(
            "segment_membership.backfill.step_failed_after_claim_ended",
            environment=claim.environment_key,
            run_id=run_id,
            step=step,
            error=summary,
        )
