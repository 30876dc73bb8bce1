"""What change detection saw, as values: the watermarks it keeps between ticks and the changes it
found above them. ``sources.change_feed`` reads them from Flagsmith's database, ``changes``
keeps the watermarks in the store, ``dispatch`` turns the changes into backfill requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

IDENTITIES = "environments_identity"
TRAITS = "environments_trait"


@dataclass(frozen=True, slots=True)
class TableMark:
    """One append-only table: the highest id seen, and where the next scan starts (the
    previous tick's highest id: every row is seen twice)."""

    last_id: int
    scan_from: int

    def advanced_to(self, highest: int | None) -> TableMark:
        return TableMark(last_id=max(self.last_id, highest or 0), scan_from=self.last_id)


@dataclass(frozen=True, slots=True)
class SegmentSignature:
    """One project's segment tables: row count, latest stamp, a digest of all of it, and a
    digest per segment (by segment key: the canonical segment's id)."""

    rows: int
    latest_change: datetime | None
    digest: str
    segments: dict[str, str] = field(default_factory=dict, compare=False)

    def changed_segments(self, before: SegmentSignature | None) -> tuple[str, ...]:
        """Keys of the segments created, edited or deleted since ``before``."""
        old = {} if before is None else before.segments
        return tuple(
            sorted(
                (k for k in set(old) | set(self.segments) if old.get(k) != self.segments.get(k)),
                key=lambda k: (len(k), k),
            )
        )


@dataclass(frozen=True)
class Watermarks:
    tables: dict[str, TableMark]
    segments: dict[int, SegmentSignature] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RowChanges:
    """New rows of one table in one environment: how many were never seen before, and the
    latest ``created_date`` of all the rows the scan found."""

    unseen: int
    latest_created: datetime | None


@dataclass(frozen=True)
class DetectedChanges:
    """Per environment id, the new identities and traits; per project id whose segment tables
    changed, the stamp of that change (None when no stamp moved: a hard deletion)."""

    identities: dict[int, RowChanges]
    traits: dict[int, RowChanges]
    segment_projects: dict[int, datetime | None]
    watermarks: Watermarks
    # Per changed project: the keys of its changed segments, and how many segments it has.
    segment_keys: dict[int, tuple[str, ...]] = field(default_factory=dict)
    segment_totals: dict[int, int] = field(default_factory=dict)
