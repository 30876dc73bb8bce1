"""Which backfill runs to end for good, pure and Dagster-free.

Dagster never learns that a run's orchestrating process was SIGKILLed (a CLI run, an OOM kill):
the run stays "started". The store knows better. A run that claimed its environment and whose
claim has since ended (its version published, the backfill failed or its lease reconciled, or a
later run claimed the environment) has nothing left to do but report; once it has also been
quiet (no event in its log) for ``grace``, its process is gone and the run is ended as failed,
with the store's verdict.

A run whose claim still holds is left alone (its lease decides), and so is a run that never
tried to claim (it may be waiting for a worker). A run that tried, and whose environment's claim
is (or was last) another run's, is dead or done: its own claim, if it got one, has ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from membership_pipeline.storage.environment_metadata import (
    BackfillStatus,
    EnvironmentMembershipMetadata,
)

DEFAULT_ORPHANED_RUN_GRACE = timedelta(minutes=2)


@dataclass(frozen=True)
class StoreVerdict:
    """What the store says became of a run's claim."""

    kind: Literal["published", "failed", "superseded"]  # the run tag's value
    detail: str


def verdict_for_quiet_run(
    run_id: str,
    *,
    metadata: EnvironmentMembershipMetadata | None,
    quiet_for: timedelta,
    grace: timedelta = DEFAULT_ORPHANED_RUN_GRACE,
) -> StoreVerdict | None:
    """The verdict to end a still-started run that claimed (or was claiming) its environment
    with, or None to leave it running."""
    if metadata is None or quiet_for < grace:
        return None
    if metadata.claim_owner != run_id:
        return StoreVerdict(
            "superseded",
            f"the environment's claim is run {metadata.claim_owner}'s, not this run's",
        )
    if metadata.last_backfill_status is BackfillStatus.SUCCEEDED:
        return StoreVerdict("published", f"it published version {metadata.published_version_id}")
    if metadata.last_backfill_status is BackfillStatus.FAILED:
        reason = (metadata.last_error or "no reason recorded").splitlines()[0]
        return StoreVerdict("failed", f"its backfill failed: {reason}")
    return None  # running: the claim's lease decides first
