"""Detected source changes → backfill requests (pure policy: no Dagster, no database).

An environment is requested when it is live, has a published version (the first backfill is
discovery's), and one of these holds:

* rows of it were never seen before (ids above the last tick's highest);
* rows seen again by the overlapping scan are newer than its published version (a version read
  before they were committed may lack them);
* its project's segment tables changed.

A request whose environment only saw segment changes names those segments (an incremental
backfill may re-evaluate just them); one with new identities or traits is full.

The window runs from the published version's ``as_of`` to the changes' latest stamp (rows'
``created_date``, the segment tables' latest stamp), so rows seen again by the overlapping scan
make the same dedup key (the lock of the first launch suppresses it); a segment change that
moved no stamp (a hard deletion) runs to now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from membership_pipeline.dispatch.requests import BackfillRequest, Reason
from membership_pipeline.sources.change_feed import DetectedChanges, RowChanges


@dataclass(frozen=True, slots=True)
class LiveEnvironment:
    id: int
    api_key: str
    project_id: int
    organisation: str


def change_requests(
    detected: DetectedChanges,
    live: Iterable[LiveEnvironment],
    published_as_of: Mapping[str, datetime | None],
    now: datetime,
    max_attempts: int,
) -> list[BackfillRequest]:
    """``published_as_of``: per api key, the ``as_of`` of its published version (absent or
    None: never published)."""
    requests = []
    for environment in live:
        as_of = published_as_of.get(environment.api_key)
        if as_of is None:
            continue
        rows = [
            changes
            for changes in (
                detected.identities.get(environment.id),
                detected.traits.get(environment.id),
            )
            if changes is not None and _may_be_missing(changes, as_of)
        ]
        segments = environment.project_id in detected.segment_projects
        if not rows and not segments:
            continue
        # Up to the changes' latest stamp, so rows seen again by the overlapping scan make the
        # same window (and dedup key) as when first seen; a segment change that moved no stamp
        # (a hard deletion) up to now.
        stamps = [c.latest_created for c in rows if c.latest_created is not None]
        if segments:
            stamps.append(detected.segment_projects[environment.project_id] or now)
        end = max([as_of, *stamps])
        only_segments = segments and not rows
        requests.append(
            BackfillRequest.new(
                organisation=environment.organisation,
                environment=environment.api_key,
                window_start=as_of,
                window_end=end,
                reason=Reason.CHANGE,
                created_at=now,
                max_attempts=max_attempts,
                segments=detected.segment_keys.get(environment.project_id, ())
                if only_segments
                else None,
                segment_total=detected.segment_totals.get(environment.project_id),
            )
        )
    return requests


def _may_be_missing(changes: RowChanges, as_of: datetime) -> bool:
    if changes.unseen:
        return True
    return changes.latest_created is not None and changes.latest_created > as_of
