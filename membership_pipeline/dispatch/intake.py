"""The intake: every backfill request is built here, whatever asks for it — discovery (a new
environment), the refresh schedule, change detection, an operator (the CLI), a retry of a
failed run. Pure: no Dagster, no database.

Change detection requests an environment when it is live, has a published version (the first
backfill is discovery's), and one of these holds:

* rows of it were never seen before (ids above the last tick's highest);
* rows seen again by the overlapping scan are newer than its published version (a version read
  before they were committed may lack them);
* its project's segment tables changed.

A request whose environment only saw segment changes names those segments (an incremental
backfill may re-evaluate just them); one with new identities or traits is full. The window runs
from the published version's ``as_of`` to the changes' latest stamp (rows' ``created_date``,
the segment tables' latest stamp), so rows seen again by the overlapping scan make the same
dedup key (the lock of the first launch suppresses it); a segment change that moved no stamp (a
hard deletion) runs to now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from membership_pipeline.dispatch.requests import BackfillRequest, Reason
from membership_pipeline.model.changes import DetectedChanges, RowChanges
from membership_pipeline.model.environment import EnvironmentInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # a new environment's window starts at the beginning


@dataclass(frozen=True)
class RequestIntake:
    """``max_attempts``: the dispatcher's, given to every new request."""

    max_attempts: int = 3

    def new_environments(
        self, organisations: Mapping[str, str], added: Iterable[str], now: datetime
    ) -> list[BackfillRequest]:
        """The first backfill of each environment discovery added (``organisations``: every
        live environment's api key → its organisation id)."""
        return [
            self._new(organisations[key], key, EPOCH, now, Reason.NEW_ENVIRONMENT, now)
            for key in added
        ]

    def refresh(
        self, organisations: Mapping[str, str], partitions: Iterable[str], now: datetime
    ) -> list[BackfillRequest]:
        """The periodic refresh of every partition whose environment is still live."""
        return [
            self._new(organisations[key], key, now, now, Reason.SCHEDULE, now)
            for key in partitions
            if key in organisations
        ]

    def manual(
        self,
        organisation: str,
        environment: str,
        now: datetime,
        *,
        reason: Reason = Reason.MANUAL,
        force: bool = False,
        segments: tuple[str, ...] | None = None,
        segment_total: int | None = None,
    ) -> BackfillRequest:
        """An operator's request (``membership enqueue``): ``segments`` names segments whose
        definitions alone changed (an incremental backfill may do)."""
        return self._new(
            organisation,
            environment,
            now,
            now,
            reason,
            now,
            force=force,
            segments=segments,
            segment_total=segment_total,
        )

    def changes(
        self,
        detected: DetectedChanges,
        live: Iterable[EnvironmentInfo],
        published_as_of: Mapping[str, datetime | None],
        now: datetime,
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
            stamps = [c.latest_created for c in rows if c.latest_created is not None]
            if segments:
                stamps.append(detected.segment_projects[environment.project_id] or now)
            only_segments = segments and not rows
            requests.append(
                self._new(
                    str(environment.organisation_id),
                    environment.api_key,
                    as_of,
                    max([as_of, *stamps]),
                    Reason.CHANGE,
                    now,
                    segments=detected.segment_keys.get(environment.project_id, ())
                    if only_segments
                    else None,
                    segment_total=detected.segment_totals.get(environment.project_id),
                )
            )
        return requests

    def captured(
        self,
        changed: Iterable[EnvironmentInfo],
        segments_changed: Iterable[EnvironmentInfo],
        refresh: Iterable[EnvironmentInfo],
        published_as_of: Mapping[str, datetime | None],
        now: datetime,
    ) -> list[BackfillRequest]:
        """What change data capture saw: a **delta** for each environment whose identities
        changed (their ids wait in the store), an incremental backfill for each whose project's
        segments changed (the plan finds which by their digests), a full one for each in
        ``refresh`` (the stream cannot tell what changed: a new slot, a truncate). The window
        runs from the published version's ``as_of`` (the beginning if none) to now."""
        requests = []
        full = {e.api_key for e in refresh}
        edited = {e.api_key for e in segments_changed} - full
        delta = {e.api_key for e in changed} - full
        environments = {e.api_key: e for e in (*changed, *segments_changed, *refresh)}
        for key, environment in sorted(environments.items()):
            start = published_as_of.get(key) or EPOCH
            common = (
                str(environment.organisation_id),
                key,
                min(start, now),
                now,
                Reason.CHANGE,
                now,
            )
            if key in full:
                requests.append(self._new(*common))
                continue
            if key in delta:
                requests.append(self._new(*common, delta=True))
            if key in edited:
                requests.append(self._new(*common, segments=()))
        return requests

    def retry(self, failed: BackfillRequest, now: datetime) -> BackfillRequest:
        """The same window again after a failed backfill, one attempt later."""
        return failed.retry(now)

    def _new(
        self,
        organisation: str,
        environment: str,
        window_start: datetime,
        window_end: datetime,
        reason: Reason,
        now: datetime,
        *,
        force: bool = False,
        segments: tuple[str, ...] | None = None,
        segment_total: int | None = None,
        delta: bool = False,
    ) -> BackfillRequest:
        return BackfillRequest.new(
            organisation=organisation,
            environment=environment,
            window_start=window_start,
            window_end=window_end,
            reason=reason,
            created_at=now,
            max_attempts=self.max_attempts,
            force=force,
            segments=segments,
            segment_total=segment_total,
            delta=delta,
        )


def _may_be_missing(changes: RowChanges, as_of: datetime) -> bool:
    if changes.unseen:
        return True
    return changes.latest_created is not None and changes.latest_created > as_of
