"""The codec between a backfill request and the tags of the Dagster run that carries it: the run
shows why it ran (reason, organisation, window, attempt, dedup key, mode), and a failed run's
tags give back the request to retry. Plain strings: no Dagster import."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from membership_pipeline.dispatch.requests import BackfillRequest, Reason

PREFIX = "membership/"
JOB_TAG = f"{PREFIX}job_id"
REASON_TAG = f"{PREFIX}reason"
ORGANISATION_TAG = f"{PREFIX}organisation"
WINDOW_START_TAG = f"{PREFIX}window_start"
WINDOW_END_TAG = f"{PREFIX}window_end"
ATTEMPT_TAG = f"{PREFIX}attempt"
MAX_ATTEMPTS_TAG = f"{PREFIX}max_attempts"
DEDUP_TAG = f"{PREFIX}dedup_key"
COALESCED_TAG = f"{PREFIX}coalesced"
MODE_TAG = f"{PREFIX}mode"
SEGMENTS_TAG = f"{PREFIX}segments"
# "organisation / project / environment": set by the dispatcher when the store knows it, and by
# the run's plan step in any case.
ENVIRONMENT_NAME_TAG = f"{PREFIX}environment_name"
PARTITION_TAG = "dagster/partition"  # the request's environment (the run's partition key)
MAX_RUNTIME_TAG = "dagster/max_runtime"
MAX_RUNTIME_SECONDS = 4 * 3600  # a hung run is stopped, then reconciled
TAG_VALUE_CHARS = 255


def request_tags(request: BackfillRequest, display_name: str | None = None) -> dict[str, str]:
    """The request's fields as run tags (its environment is the run's partition key)."""
    tags = {
        JOB_TAG: request.job_id,
        REASON_TAG: request.reason.value,
        ORGANISATION_TAG: request.organisation,
        WINDOW_START_TAG: request.window_start.isoformat(),
        WINDOW_END_TAG: request.window_end.isoformat(),
        ATTEMPT_TAG: str(request.attempt),
        MAX_ATTEMPTS_TAG: str(request.max_attempts),
        DEDUP_TAG: request.dedup_key[:TAG_VALUE_CHARS],
        MAX_RUNTIME_TAG: str(MAX_RUNTIME_SECONDS),
        MODE_TAG: request.mode,
    }
    if request.coalesced:
        tags[COALESCED_TAG] = str(len(request.coalesced))
    if display_name:
        tags[ENVIRONMENT_NAME_TAG] = display_name[:TAG_VALUE_CHARS]
    if request.segments is not None:
        listed = " ".join(request.segments)
        # A long list is left out (a retry then re-requests the mode only; the run itself
        # re-evaluates every segment whose definition differs from the published version's).
        if len(listed) <= TAG_VALUE_CHARS:
            tags[SEGMENTS_TAG] = listed
    return tags


def is_dispatched(tags: Mapping[str, str]) -> bool:
    """Whether a run carries a request (the UI's and the CLI's runs carry none)."""
    return JOB_TAG in tags


def request_from_tags(tags: Mapping[str, str], created_at: datetime) -> BackfillRequest:
    """The request a dispatched run carried, as of ``created_at``."""
    mode = tags.get(MODE_TAG)
    # An incremental request names its segments; a delta may carry edits (a long list is not
    # tagged: the run evaluates every segment edited since the published version anyway).
    listed = tags.get(SEGMENTS_TAG, "").split()
    segments = tuple(listed) if mode == "incremental" or (mode == "delta" and listed) else None
    return BackfillRequest(
        job_id=tags[JOB_TAG],
        dedup_key=tags[DEDUP_TAG],
        organisation=tags[ORGANISATION_TAG],
        environment=tags[PARTITION_TAG],
        window_start=datetime.fromisoformat(tags[WINDOW_START_TAG]),
        window_end=datetime.fromisoformat(tags[WINDOW_END_TAG]),
        reason=Reason(tags[REASON_TAG]),
        created_at=created_at,
        attempt=int(tags[ATTEMPT_TAG]),
        max_attempts=int(tags[MAX_ATTEMPTS_TAG]),
        segments=segments,
        delta=mode == "delta",
    )
