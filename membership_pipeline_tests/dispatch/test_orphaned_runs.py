"""The decision to end a still-started backfill run, from the store's view of its claim."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from membership_pipeline.dispatch.orphaned_runs import verdict_for_quiet_run
from membership_pipeline.storage import BackfillStatus, EnvironmentMembershipMetadata

NOW = datetime(2026, 11, 27, tzinfo=UTC)
GRACE = timedelta(minutes=2)
RUN = "run-1"

RUNNING = EnvironmentMembershipMetadata(
    environment_key="env",
    last_backfill_status=BackfillStatus.RUNNING,
    last_backfill_started_at=NOW,
    last_backfill_completed_at=None,
    last_error=None,
    claim_owner=RUN,
    claim_lease_expires_at=NOW + timedelta(minutes=10),
    published_version_id=4,
    publication=3,
    published_at=NOW,
    published_as_of=NOW,
    published_identity_count=10,
    published_segment_count=2,
    updated_at=NOW,
)
PUBLISHED = dataclasses.replace(
    RUNNING, last_backfill_status=BackfillStatus.SUCCEEDED, published_version_id=5
)
FAILED = dataclasses.replace(
    RUNNING,
    last_backfill_status=BackfillStatus.FAILED,
    last_error="the lease of run-1 lapsed at 2026-11-27 00:10:00Z\nmore detail",
)


@pytest.mark.parametrize(
    ("metadata", "kind", "detail"),
    [
        (PUBLISHED, "published", "it published version 5"),
        (FAILED, "failed", f"its backfill failed: {FAILED.last_error.splitlines()[0]}"),
        (
            dataclasses.replace(RUNNING, claim_owner="run-2"),
            "superseded",
            "the environment's claim is run run-2's, not this run's",
        ),
    ],
)
def test_a_quiet_run_whose_claim_ended_gets_the_store_verdict(metadata, kind, detail):
    verdict = verdict_for_quiet_run(RUN, metadata=metadata, quiet_for=GRACE, grace=GRACE)
    assert (verdict.kind, verdict.detail) == (kind, detail)


@pytest.mark.parametrize(
    ("metadata", "quiet_for"),
    [
        (PUBLISHED, GRACE - timedelta(seconds=1)),  # still reporting, maybe
        (RUNNING, timedelta(hours=1)),  # its claim holds: the lease decides first
        (None, timedelta(hours=1)),  # the store never saw the environment
    ],
)
def test_a_run_is_left_alone_without_a_verdict_or_before_its_grace(metadata, quiet_for):
    assert verdict_for_quiet_run(RUN, metadata=metadata, quiet_for=quiet_for, grace=GRACE) is None
