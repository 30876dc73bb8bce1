"""Every launch goes through the dispatcher: discovery, the schedule, change detection and
manual requests enqueue backfill requests in the durable queue; a tick of the policy decides
which to launch, and the published ones become run requests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from membership_pipeline.defs.membership.backfill_events import ENVIRONMENT_NAME_TAG
from membership_pipeline.defs.membership.jobs import BACKFILL_JOB, EDIT_JOB
from membership_pipeline.defs.membership.resources import MembershipStoreResource
from membership_pipeline.dispatch.dispatcher import dispatch_tick
from membership_pipeline.dispatch.policy import Outcome, PolicySettings, TickResult, policy_settings
from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.requests import BackfillRequest
from membership_pipeline.sharding.shard_backfill import DEFAULT_INCREMENTAL_SHARD_IDENTITIES
from membership_pipeline.storage.environment_metadata import read_metadata_many

MAX_RUNTIME_SECONDS = 4 * 3600  # dagster/max_runtime: a hung run is stopped, then reconciled
TAG_PREFIX = "membership/"
REASON_TAG = f"{TAG_PREFIX}reason"
JOB_TAG = f"{TAG_PREFIX}job_id"
MODE_TAG = f"{TAG_PREFIX}mode"
SEGMENTS_TAG = f"{TAG_PREFIX}segments"
TAG_VALUE_CHARS = 255


class DispatchPolicyResource(dg.ConfigurableResource):
    """The dispatcher's policy settings."""

    coalesce_seconds: float = 300
    dedup_ttl_seconds: float = 600
    launches_per_organisation_per_minute: int = 10
    # An organisation's own cap (by organisation id); 0 deny-lists it.
    organisation_caps: dict[str, int] = Field(default_factory=dict)
    max_request_age_seconds: float = 24 * 3600
    max_attempts: int = 3
    # A segments-only request naming more than this share of the segments runs as full.
    incremental_max_share: float = 0.5
    # An incremental backfill of an environment of at most this many identities (one shard)
    # runs as ``segment_membership_edit``: every step in the run's process.
    edit_job_max_identities: int = DEFAULT_INCREMENTAL_SHARD_IDENTITIES

    def settings(self) -> PolicySettings:
        return policy_settings(self.model_dump())


def enqueue_and_dispatch(
    store_resource: MembershipStoreResource,
    policy: DispatchPolicyResource,
    requests: Iterable[BackfillRequest],
    now: datetime | None = None,
    also: Callable[[sa.Connection], None] | None = None,
) -> tuple[list[dg.RunRequest], TickResult]:
    """Queue the requests (and ``also``'s writes, in the same transaction), then run a
    dispatch tick."""
    store = store_resource.get()
    queue = DatabaseQueue(store.database)
    queue.enqueue(requests, also)
    result = dispatch_tick(queue, store, policy.settings(), now or store.clock())
    found = {}
    if result.launches:
        with store.database.reader.connect() as conn:
            found = read_metadata_many(conn, [r.environment for r in result.launches])
    requests = []
    for launched in result.launches:
        known = found.get(launched.environment)
        size = known.published_identity_count if known else None
        small = (
            launched.segments is not None
            and size is not None
            and size <= policy.edit_job_max_identities
        )
        job_name = EDIT_JOB if small else BACKFILL_JOB
        requests.append(run_request(launched, job_name, known.display_name if known else None))
    return requests, result


def run_request(
    request: BackfillRequest, job_name: str = BACKFILL_JOB, display_name: str | None = None
) -> dg.RunRequest:
    """Run key = the request's job id (unique per request, never the environment); the request's
    fields as tags, so the run shows why it ran. ``job_name``: ``segment_membership_edit`` for
    an incremental backfill that fits one shard (see jobs.py); ``display_name``: the
    environment's name as the store last recorded it (its run's plan step tags it anyway)."""
    tags = {
        JOB_TAG: request.job_id,
        REASON_TAG: request.reason.value,
        f"{TAG_PREFIX}organisation": request.organisation,
        f"{TAG_PREFIX}window_start": request.window_start.isoformat(),
        f"{TAG_PREFIX}window_end": request.window_end.isoformat(),
        f"{TAG_PREFIX}attempt": str(request.attempt),
        f"{TAG_PREFIX}max_attempts": str(request.max_attempts),
        f"{TAG_PREFIX}dedup_key": request.dedup_key[:255],
        "dagster/max_runtime": str(MAX_RUNTIME_SECONDS),
    }
    if request.coalesced:
        tags[f"{TAG_PREFIX}coalesced"] = str(len(request.coalesced))
    tags[MODE_TAG] = request.mode
    if display_name:
        tags[ENVIRONMENT_NAME_TAG] = display_name[:TAG_VALUE_CHARS]
    if request.segments is not None:
        listed = " ".join(request.segments)
        # A long list is left out (a retry then re-requests the mode only; the run itself
        # re-evaluates every segment whose definition differs from the published version's).
        if len(listed) <= TAG_VALUE_CHARS:
            tags[SEGMENTS_TAG] = listed
    config = {"force": request.force, "mode": request.mode}
    run_config = {"ops": {"segment_membership_bitmaps": {"config": config}}}
    return dg.RunRequest(
        job_name=job_name,
        run_key=request.job_id,
        partition_key=request.environment,
        tags=tags,
        run_config=run_config,
    )


def skip_reason(result: TickResult) -> dg.SkipReason:
    waiting = [
        f"{d.environment}: {d.outcome.value} ({d.detail})"
        for d in result.decisions
        if d.outcome is not Outcome.COALESCED
    ]
    shown = "; ".join(waiting[:10]) + (f" (+{len(waiting) - 10} more)" if len(waiting) > 10 else "")
    return dg.SkipReason(f"no backfill launched: {result.summary()}. {shown}".strip())
