"""A backfill request: one environment's window of source changes to bring into its bitmaps."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Reason(StrEnum):
    """Why a backfill is wanted; listed from the most urgent."""

    MANUAL = "manual"
    NEW_ENVIRONMENT = "new_environment"
    RETRY = "retry"
    CHANGE = "change"
    SCHEDULE = "schedule"

    @property
    def urgency(self) -> int:
        return list(Reason).index(self)  # 0 is the most urgent


@dataclass(frozen=True)
class BackfillRequest:
    job_id: str
    dedup_key: str
    organisation: str
    environment: str
    window_start: datetime
    window_end: datetime
    reason: Reason
    created_at: datetime
    attempt: int = 1
    max_attempts: int = 3
    force: bool = False  # skip the cooldown (never the guard against a running backfill)
    coalesced: tuple[str, ...] = ()  # job ids of the requests merged into this one
    # The segment keys a segments-only change concerns (an incremental backfill may do);
    # None: a full backfill (identities or traits changed, discovery, the schedule, by hand).
    segments: tuple[str, ...] | None = None
    segment_total: int | None = None  # the environment's segments when requested
    # Identities captured as changed (their ids wait in the store, not here): a delta backfill,
    # which also evaluates ``segments`` (edits merged into it), if any, on every identity.
    delta: bool = False

    @property
    def mode(self) -> str:
        if self.delta:
            return "delta"
        return "full" if self.segments is None else "incremental"

    def __post_init__(self) -> None:
        if self.window_end < self.window_start:
            raise ValueError(
                f"request {self.job_id}: window ends ({self.window_end.isoformat()}) before it "
                f"starts ({self.window_start.isoformat()})"
            )
        if self.attempt < 1:
            raise ValueError(
                f"request {self.job_id}: attempt must be 1 or more, got {self.attempt}"
            )

    @classmethod
    def new(
        cls,
        *,
        organisation: str,
        environment: str,
        window_start: datetime,
        window_end: datetime,
        reason: Reason,
        created_at: datetime,
        max_attempts: int = 3,
        force: bool = False,
        segments: tuple[str, ...] | None = None,
        segment_total: int | None = None,
        delta: bool = False,
    ) -> BackfillRequest:
        return cls(
            job_id=uuid.uuid4().hex,
            dedup_key=f"{environment}:{reason.value}:{window_start.isoformat()}:"
            f"{window_end.isoformat()}{':delta' if delta else ''}",
            organisation=organisation,
            environment=environment,
            window_start=window_start,
            window_end=window_end,
            reason=reason,
            created_at=created_at,
            max_attempts=max_attempts,
            force=force,
            segments=segments,
            segment_total=segment_total,
            delta=delta,
        )

    def describe(self, now: datetime) -> str:
        """``env_x full (change, queued 3 min ago)``: one request as an operator reads it."""
        return (
            f"{self.environment} {self.mode} ({self.reason.value}, queued "
            f"{waited(self.created_at, now)} ago)"
        )

    def retry(self, now: datetime) -> BackfillRequest:
        """The same window again after a failed backfill, one attempt later."""
        return dataclasses.replace(
            self,
            job_id=uuid.uuid4().hex,
            dedup_key=f"{self.dedup_key}:attempt{self.attempt + 1}",
            reason=Reason.RETRY,
            attempt=self.attempt + 1,
            created_at=now,
            coalesced=(),
        )


def waited(since: datetime, now: datetime) -> str:
    """How long ago ``since`` was, rounded as a person says it: 40 s, 3 min, 2 h 5 min, 4 d."""
    seconds = max(int((now - since).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d"


def describe_queued(requests: list[BackfillRequest], now: datetime, shown: int = 5) -> str:
    """The oldest ``shown`` requests, one clause each, and how many more."""
    ordered = sorted(requests, key=lambda r: r.created_at)
    text = "; ".join(r.describe(now) for r in ordered[:shown])
    return text + (f"; and {len(ordered) - shown} more" if len(ordered) > shown else "")
