"""One look for changes: the source's live environments and what changed above the watermarks
the store keeps, with the watermarks to save once the requests it makes are queued (in the same
transaction: a crash in between detects the same changes again, never skips them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from membership_pipeline.changes.watermarks import load_watermarks, save_watermarks
from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.model.changes import DetectedChanges, Watermarks
from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.sources.change_feed import ROWS_PER_TICK, ChangeFeed
from membership_pipeline.sources.flagsmith_source import FlagsmithSource


@dataclass(frozen=True)
class Detection:
    live: list[EnvironmentInfo]
    # None on the very first look, which only sets the watermarks (one max(id) per table), and
    # while capture carries the changes.
    changes: DetectedChanges | None
    previous: Watermarks | None
    keep: Watermarks

    @property
    def anything(self) -> bool:
        found = self.changes
        return found is not None and bool(
            found.identities or found.traits or found.segment_projects
        )

    def save(self, conn: sa.Connection, now: datetime) -> None:
        """The new watermarks, in the caller's transaction (the one that queues the requests)."""
        save_watermarks(conn, self.keep, self.previous, now)


def detect_changes(
    source: FlagsmithSource,
    database: StoreDatabase,
    *,
    carried_by_capture: bool = False,
    rows_per_tick: int = ROWS_PER_TICK,
) -> Detection:
    """``carried_by_capture``: capture's stream carries every change, so no row is scanned (at
    10M identities a tick's scans competed with capture's deltas for the source's cores); the
    watermarks move past the tables' rows, ready for when capture stops."""
    previous = load_watermarks(database)
    live = source.environments()
    feed = ChangeFeed(source.engine, rows_per_tick)
    if previous is None:
        return Detection(live, None, None, feed.current())
    if carried_by_capture:
        return Detection(live, None, previous, feed.passed(previous))
    changes = feed.since(previous)
    return Detection(live, changes, previous, changes.watermarks)
