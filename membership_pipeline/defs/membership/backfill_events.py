"""The backfill's lifecycle events (``segment_membership.backfill.*``) and its failure path: a
failure hook on every step of the backfill, so a step that fails for good (after its retries),
in whatever process or host, marks the environment failed and names itself."""

from __future__ import annotations

import dagster as dg

from membership_pipeline.backfill.failures import fail_backfill
from membership_pipeline.dispatch.run_tags import PARTITION_TAG
from membership_pipeline.storage import ClaimRefused
from membership_pipeline.structured_logging import get_logger

log = get_logger("backfill")

GUARD_TAG = "membership/guard"
# GUARD_TAG while a run claims its environment, then once it holds the claim (else "skipped: …")
CLAIMING, CLAIMED = "claiming", "claimed"
GUARD_REASON_TAG = "membership/guard_reason"


@dg.failure_hook(required_resource_keys={"membership_store"})
def fail_backfill_on_step_failure(context: dg.HookContext) -> None:
    run = context.instance.get_run_by_id(context.run_id)
    environment_key = run.tags.get(PARTITION_TAG) if run else None
    if environment_key is None:
        return
    store = context.resources.membership_store.get()
    claim = store.running_claim(environment_key, context.run_id)
    if claim is None:
        return  # skipped by the guard, or the claim already ended (a sibling step failed it)
    error = context.op_exception or RuntimeError("the step failed")
    # IO manager and framework errors wrap the user's; report the user's.
    error = getattr(error, "user_exception", None) or error
    fail_backfill(store, claim, context.run_id, error, context.step_key)


def skip_by_guard(context: dg.OpExecutionContext, refused: ClaimRefused) -> None:
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
