"""The durable request queue (a table in the store's database) and an in-memory twin for unit
tests, with the dedup locks and the launch log the policy reads."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.dispatch.policy import RATE_WINDOW, TickResult
from membership_pipeline.dispatch.requests import BackfillRequest, Reason
from membership_pipeline.dispatch.tables import backfill_request, dedup_lock, launch

LAUNCH_LOG_KEPT = timedelta(hours=1)


class RequestQueue(Protocol):
    def enqueue(self, requests: Iterable[BackfillRequest]) -> None: ...
    def pending(self) -> list[BackfillRequest]: ...
    def dedup_locks(self, now: datetime) -> dict[str, datetime]: ...
    def recent_launches(self, now: datetime, delta: bool = False) -> list[tuple[str, datetime]]: ...
    def record(self, read: list[BackfillRequest], result: TickResult, now: datetime,
               dedup_ttl: timedelta) -> None: ...  # fmt: skip


class InMemoryQueue:
    def __init__(self) -> None:
        self.requests: dict[str, BackfillRequest] = {}
        self.locks: dict[str, datetime] = {}
        self.launches: list[tuple[str, datetime, bool]] = []

    def enqueue(self, requests: Iterable[BackfillRequest]) -> None:
        self.requests.update((r.job_id, r) for r in requests)

    def pending(self) -> list[BackfillRequest]:
        return list(self.requests.values())

    def dedup_locks(self, now: datetime) -> dict[str, datetime]:
        return {key: until for key, until in self.locks.items() if until > now}

    def recent_launches(self, now: datetime, delta: bool = False) -> list[tuple[str, datetime]]:
        return [(o, at) for o, at, d in self.launches if now - at < RATE_WINDOW and d == delta]

    def record(
        self, read: list[BackfillRequest], result: TickResult, now: datetime, dedup_ttl: timedelta
    ) -> None:
        for request in read:
            self.requests.pop(request.job_id, None)
        self.enqueue(result.still_queued)
        for launched in result.launches:
            self.launches.append((launched.organisation, now, launched.delta))
            self.locks[launched.dedup_key] = now + dedup_ttl


class DatabaseQueue:
    """The same queue in ``membership_backfill_request`` (PostgreSQL or SQLite): requests
    survive daemon restarts, and locks and launches hold across sensor ticks and processes."""

    def __init__(self, database: StoreDatabase) -> None:
        self._database = database

    def enqueue(
        self,
        requests: Iterable[BackfillRequest],
        also: Callable[[sa.Connection], None] | None = None,
    ) -> None:
        """Queue the requests; ``also`` writes in the same transaction (change detection's
        watermarks advance exactly when what they saw is queued)."""
        rows = [_row(r) for r in requests]
        if rows or also is not None:
            with self._database.writer.begin() as conn:
                if rows:
                    conn.execute(backfill_request.insert(), rows)
                if also is not None:
                    also(conn)

    def pending(self) -> list[BackfillRequest]:
        with self._database.reader.connect() as conn:
            rows = conn.execute(sa.select(backfill_request)).all()
        return [_request(row) for row in rows]

    def dedup_locks(self, now: datetime) -> dict[str, datetime]:
        with self._database.reader.connect() as conn:
            rows = conn.execute(
                sa.select(dedup_lock.c.dedup_key, dedup_lock.c.expires_at).where(
                    dedup_lock.c.expires_at > now
                )
            ).all()
        return dict(rows)  # type: ignore[arg-type]

    def recent_launches(self, now: datetime, delta: bool = False) -> list[tuple[str, datetime]]:
        with self._database.reader.connect() as conn:
            rows = conn.execute(
                sa.select(launch.c.organisation, launch.c.launched_at).where(
                    launch.c.launched_at > now - RATE_WINDOW, launch.c.delta == delta
                )
            ).all()
        return [(row.organisation, row.launched_at) for row in rows]

    def record(
        self, read: list[BackfillRequest], result: TickResult, now: datetime, dedup_ttl: timedelta
    ) -> None:
        """In one transaction: the requests this tick read are replaced by those still queued
        (their merged forms); launches and their dedup locks are recorded."""
        launched = result.launches
        with self._database.writer.begin() as conn:
            ids = [r.job_id for r in read]
            for start in range(0, len(ids), 500):
                conn.execute(
                    backfill_request.delete().where(
                        backfill_request.c.job_id.in_(ids[start : start + 500])
                    )
                )
            if result.still_queued:
                conn.execute(backfill_request.insert(), [_row(r) for r in result.still_queued])
            if launched:
                keys = [r.dedup_key for r in launched]
                conn.execute(dedup_lock.delete().where(dedup_lock.c.dedup_key.in_(keys)))
                conn.execute(
                    dedup_lock.insert(),
                    [
                        {
                            "dedup_key": r.dedup_key,
                            "expires_at": now + dedup_ttl,
                            "job_id": r.job_id,
                        }
                        for r in launched
                    ],
                )
                conn.execute(
                    launch.insert(),
                    [
                        {"job_id": r.job_id, "organisation": r.organisation,
                         "environment_key": r.environment, "launched_at": now,
                         "delta": r.delta}
                        for r in launched
                    ],
                )  # fmt: skip
            conn.execute(dedup_lock.delete().where(dedup_lock.c.expires_at <= now))
            conn.execute(launch.delete().where(launch.c.launched_at < now - LAUNCH_LOG_KEPT))


def _row(request: BackfillRequest) -> dict[str, Any]:
    return {
        "job_id": request.job_id,
        "dedup_key": request.dedup_key,
        "organisation": request.organisation,
        "environment_key": request.environment,
        "window_start": request.window_start,
        "window_end": request.window_end,
        "reason": request.reason.value,
        "attempt": request.attempt,
        "max_attempts": request.max_attempts,
        "force": request.force,
        "created_at": request.created_at,
        "coalesced": " ".join(request.coalesced),
        "segments": None if request.segments is None else " ".join(request.segments),
        "segment_total": request.segment_total,
        "delta": request.delta,
    }


def _request(row: sa.Row[Any]) -> BackfillRequest:
    return BackfillRequest(
        job_id=row.job_id,
        dedup_key=row.dedup_key,
        organisation=row.organisation,
        environment=row.environment_key,
        window_start=row.window_start,
        window_end=row.window_end,
        reason=Reason(row.reason),
        created_at=row.created_at,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        force=row.force,
        coalesced=tuple(row.coalesced.split()),
        segments=None if row.segments is None else tuple(row.segments.split()),
        segment_total=row.segment_total,
        delta=bool(row.delta),
    )
