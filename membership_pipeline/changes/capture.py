"""Change data capture, one tick at a time: look at the source's replication slot, read a
bounded batch of committed changes, and hand back what to record — the changed identities per
environment (the store's pending identities), the environments whose segments changed, and
those the stream cannot tell about (a new slot, a truncate) — with the capture state to save in
the same store transaction as the requests it makes.

The first tick on a slot refreshes in full every live environment whose published version was
read before the slot's consistent point (what changed before it is unknown to the slot; see
``model.slot_coverage`` for how "before" is told), not those backfilled after it was made (as
after ``membership capture enable``, a full backfill, then capture); from then on, exactly once,
whatever is killed when: the store
records the position after the last transaction it took with those rows; only after that
commit is the slot advanced to it (``confirm``). A crash before the commit re-reads the batch;
one between the commit and the advance re-reads transactions the store already holds, which
are recognised by their position and skipped. A slot that was dropped or invalidated is made
anew, and the environments it cannot cover are refreshed in full (what happened in between is
unknown).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psutil
import sqlalchemy as sa

from membership_pipeline.changes.tables import capture_state
from membership_pipeline.database.engines import StoreDatabase, insert_if_absent
from membership_pipeline.database.urls import database_url
from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.model.slot_coverage import read_after_slot
from membership_pipeline.sources.change_stream import StreamBatch, read_batch
from membership_pipeline.sources.pgoutput import format_lsn
from membership_pipeline.sources.replication import (
    DEFAULT_PUBLICATION,
    DEFAULT_SLOT,
    MadeSlot,
    SlotState,
    capture_support,
    create_slot,
    drop_slot,
    publication_exists,
    slot_state,
)
from membership_pipeline.sources.replication import advance as advance_slot
from membership_pipeline.storage.pending_identities import record_pending
from membership_pipeline.storage.versions import published_source_xmins
from membership_pipeline.structured_logging import get_logger

log = get_logger("capture")
DEFAULT_BATCH_CHANGES = 20_000
STREAMING, UNAVAILABLE, RECREATED = "streaming", "unavailable", "recreated"
ENABLED = "enabled"  # `membership capture enable` made the slot; no tick has read it yet
BUSY = "busy"  # another session holds the slot this moment: nothing read, nothing saved
SLOT_IN_USE = "55006"  # PostgreSQL's object_in_use: "replication slot ... is active for PID"
CAPTURE_ALIVE = timedelta(minutes=5)  # a streaming state older than this: capture stopped


@dataclass(frozen=True)
class CaptureSettings:
    slot: str = DEFAULT_SLOT
    publication: str = DEFAULT_PUBLICATION
    batch_changes: int = DEFAULT_BATCH_CHANGES  # messages per tick (whole transactions)


@dataclass(frozen=True)
class CaptureStatus:
    """The capture state the store recorded (what ``membership status`` shows)."""

    slot: str
    state: str
    confirmed_position: int | None
    detail: str | None
    changes_recorded: int
    updated_at: datetime
    slot_horizon: int | None = None  # see model.slot_coverage
    consumer: str | None = None  # a capture process holding the slot (host:pid)
    consumer_until: datetime | None = None  # its lease

    def describe(self) -> str:
        where = format_lsn(self.confirmed_position) if self.confirmed_position else "-"
        return (
            f"change capture: {self.state} (slot {self.slot}, at {where}, "
            f"{self.changes_recorded:,} identity changes recorded"
            + (f"; {self.detail}" if self.detail else "")
            + (
                f"; read by the process {self.consumer}, lease until "
                f"{self.consumer_until.isoformat(timespec='seconds')}"
                if self.consumer and self.consumer_until
                else ""
            )
            + f"; as of {self.updated_at.isoformat(timespec='seconds')})"
        )


@dataclass
class CaptureTick:
    settings: CaptureSettings
    state: str
    detail: str = ""
    batch: StreamBatch = field(default_factory=StreamBatch)
    slot: SlotState | None = None
    position: int | None = None  # what the store will hold once this tick is saved
    slot_horizon: int | None = None  # a slot this tick made: its horizon
    changed: list[EnvironmentInfo] = field(default_factory=list)  # identities pending
    segments_changed: list[EnvironmentInfo] = field(default_factory=list)
    refresh: list[EnvironmentInfo] = field(default_factory=list)  # every one, in full
    pending: list[tuple[str, int, int]] = field(default_factory=list)  # (env, identity, pos)

    @property
    def streaming(self) -> bool:
        return self.state in (STREAMING, RECREATED)

    def save(self, conn: sa.Connection, now: datetime) -> None:
        """In the caller's transaction (the one that queues this tick's requests)."""
        record_pending(conn, self.pending, now)
        insert_if_absent(
            conn,
            capture_state,
            {"slot_name": self.settings.slot, "state": self.state, "updated_at": now},
        )
        values: dict[str, object] = {"state": self.state, "detail": self.detail, "updated_at": now}
        if self.position is not None:
            values["confirmed_position"] = self.position
        if self.slot_horizon is not None:
            values["slot_horizon"] = self.slot_horizon
        conn.execute(
            capture_state.update()
            .where(capture_state.c.slot_name == self.settings.slot)
            .values(
                **values,
                changes_recorded=capture_state.c.changes_recorded + len(self.pending),
            )
        )


class ChangeCapture:
    """The consumer of one source's slot. Its own small engine: the slot's functions and one
    lookup per tick (the source's tables are never written)."""

    def __init__(self, source_url: str, settings: CaptureSettings | None = None) -> None:
        self.settings = settings or CaptureSettings()
        self.engine = sa.create_engine(database_url(source_url), pool_size=1, max_overflow=1)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ChangeCapture:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def look(
        self,
        database: StoreDatabase,
        live_environments: Callable[[], list[EnvironmentInfo]],
        recorded: CaptureStatus | None = None,
    ) -> CaptureTick:
        """``live_environments`` is asked only when the stream holds changes (an idle tick
        reads the slot and nothing else); ``recorded``: the store's capture state, when the
        caller has just read it."""
        settings = self.settings
        recorded = recorded or capture_status(database, settings.slot)
        after = recorded.confirmed_position if recorded else None
        if self.engine.dialect.name != "postgresql":
            return CaptureTick(settings, UNAVAILABLE, f"the source is {self.engine.dialect.name}")
        with self.engine.connect() as conn:
            reason = capture_support(conn)
            if reason is None and not publication_exists(conn, settings.publication):
                reason = (
                    f"publication {settings.publication} does not exist on the source (run "
                    "`membership capture enable`)"
                )
            if reason is not None:
                return CaptureTick(settings, UNAVAILABLE, reason)
            slot = slot_state(conn, settings.slot)
        if not slot.exists or slot.lost:
            return self._recreate(database, slot, recorded is not None, live_environments())
        try:
            with self.engine.connect() as conn, conn.begin():
                batch = read_batch(
                    conn, settings.slot, settings.publication, settings.batch_changes, after
                )
        except sa.exc.OperationalError as error:
            if getattr(error.orig, "pgcode", None) != SLOT_IN_USE:
                raise
            reason = str(error.orig).strip().splitlines()[0]
            return CaptureTick(settings, BUSY, f"{reason}: this tick reads nothing")
        known = [p for p in (batch.end, after, slot.confirmed) if p is not None]
        if batch.read_through is not None and not batch.identities and not batch.segment_projects:
            # Nothing to record below it: the slot can move on (idle ticks stay cheap).
            known.append(batch.read_through)
        tick = CaptureTick(settings, STREAMING, batch=batch, slot=slot)
        tick.position = max(known) if known else None
        # The first tick on this slot: what changed before the slot was made is unknown.
        first = recorded is None or recorded.confirmed_position is None
        if not (first or batch.identities or batch.segment_projects or batch.truncated):
            _say_skipped(batch)
            return tick
        live = live_environments()
        if first:
            horizon = recorded.slot_horizon if recorded else None
            tick.refresh = unread_since_slot(database, live, horizon)
            tick.detail = f"capture started at {format_lsn(tick.position or 0)}: " + _refresh_said(
                len(tick.refresh), len(live)
            )
        by_id = {e.id: e for e in live}
        for environment_id, ids in batch.identities.items():
            environment = by_id.get(environment_id)
            if environment is None:
                batch.skipped.append(
                    f"{len(ids)} identity changes of environment {environment_id}, not live"
                )
                continue
            tick.changed.append(environment)
            tick.pending.extend((environment.api_key, i, p) for i, p in ids.items())
        tick.segments_changed = [e for e in live if e.project_id in batch.segment_projects]
        if batch.truncated:
            tick.refresh = live
            tick.detail = f"{', '.join(sorted(set(batch.truncated)))} truncated: full refresh"
        if tick.refresh:
            log.warning("segment_membership.capture.full_refresh", reason=tick.detail)
        _say_skipped(batch)
        return tick

    def confirm(self, tick: CaptureTick) -> None:
        """After the store committed ``tick``: advance the slot past what it recorded."""
        if tick.state != STREAMING or tick.position is None or tick.slot is None:
            return
        if tick.slot.confirmed is not None and tick.position <= tick.slot.confirmed:
            return  # nothing new
        with self.engine.connect() as conn, conn.begin():
            advance_slot(conn, self.settings.slot, tick.position)

    def _recreate(
        self,
        database: StoreDatabase,
        slot: SlotState,
        had_one: bool,
        live: list[EnvironmentInfo],
    ) -> CaptureTick:
        """A new slot; the environments it cannot cover refreshed in full (the changes between
        the old slot's end and the new one's start are unknown)."""
        with self.engine.connect() as conn, conn.begin():
            if slot.lost:
                drop_slot(conn, slot.name)
        with self.engine.connect() as conn, conn.begin():
            made = create_slot(conn, slot.name)
        if slot.lost:
            what = f"slot {slot.name} was invalidated (its WAL was removed)"
        elif had_one:
            what = f"slot {slot.name} was dropped"
        else:
            what = f"slot {slot.name} did not exist"
        refresh = unread_since_slot(database, live, made.horizon)
        detail = f"{what}: made anew at {format_lsn(made.position)}; " + _refresh_said(
            len(refresh), len(live)
        )
        log.warning("segment_membership.capture.slot_recreated", slot=slot.name, detail=detail)
        return CaptureTick(
            self.settings,
            RECREATED,
            detail,
            position=made.position,
            slot_horizon=made.horizon,
            refresh=refresh,
            slot=None,
        )


def unread_since_slot(
    database: StoreDatabase, live: list[EnvironmentInfo], horizon: int | None
) -> list[EnvironmentInfo]:
    """The live environments a slot made at ``horizon`` cannot keep exact: never published,
    or published from a read that began before the slot's consistent point."""
    read = published_source_xmins(database)
    return [e for e in live if not read_after_slot(read.get(e.api_key), horizon)]


def _refresh_said(refreshed: int, live: int) -> str:
    if refreshed == 0:
        return f"no full refresh: all {live} environments were read after the slot was made"
    if refreshed == live:
        return (
            f"full refresh of every environment ({live}: each was read before the slot was made, "
            "or never)"
        )
    return (
        f"full refresh of {refreshed} of {live} environments (read before the slot was made, or "
        f"never); the other {live - refreshed} were read after it and need none"
    )


def record_new_slot(database: StoreDatabase, slot: str, made: MadeSlot, now: datetime) -> None:
    """A slot ``membership capture enable`` made: its horizon, and no position yet (the first
    tick reads from the slot's start and refreshes what the slot cannot cover). A slot it found
    already made (no horizon) leaves the recorded state as it is."""
    if made.horizon is None:
        return
    detail = f"slot made at {format_lsn(made.position)}; no capture tick has read it yet"
    with database.writer.begin() as conn:
        insert_if_absent(
            conn, capture_state, {"slot_name": slot, "state": ENABLED, "updated_at": now}
        )
        conn.execute(
            capture_state.update()
            .where(capture_state.c.slot_name == slot)
            .values(
                state=ENABLED,
                detail=detail,
                confirmed_position=None,
                slot_horizon=made.horizon,
                updated_at=now,
            )
        )


def _say_skipped(batch: StreamBatch) -> None:
    """Changes the store cannot place, said once: the slot moves past them with the batch."""
    if batch.skipped:
        log.warning(
            "segment_membership.capture.skipped",
            changes=len(batch.skipped),
            examples=batch.skipped[:5],
        )


def capture_status(database: StoreDatabase, slot: str | None = None) -> CaptureStatus | None:
    """The recorded capture state (of ``slot``, else the most recently updated)."""
    query = sa.select(capture_state).order_by(capture_state.c.updated_at.desc())
    if slot is not None:
        query = query.where(capture_state.c.slot_name == slot)
    with database.reader.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return CaptureStatus(
        row.slot_name,
        row.state,
        row.confirmed_position,
        row.detail,
        row.changes_recorded,
        row.updated_at,
        row.slot_horizon,
        row.consumer,
        row.consumer_until,
    )


def capturing(database: StoreDatabase, now: datetime) -> bool:
    """Whether capture is on and alive: streaming, and its state recorded recently (an idle
    streaming tick re-records it every minute)."""
    status = capture_status(database)
    return (
        status is not None
        and status.state in (STREAMING, RECREATED)
        and now - status.updated_at < CAPTURE_ALIVE
    )


@dataclass(frozen=True)
class SlotHolder:
    """Another capture process holding the slot, and until when its lease runs."""

    consumer: str  # host:pid
    until: datetime


def hold_consumer(
    database: StoreDatabase, slot: str, consumer: str, *, now: datetime, lease: timedelta
) -> SlotHolder | None:
    """Take or renew the slot for ``consumer`` (a capture process, ``host:pid``) unless another
    live one holds it — one consumer at a time, so requests are made once: None when
    ``consumer`` holds it now, else who does. A holder whose lease lapsed, or whose process on
    this host has ended (a crash, then a restart here), is taken over at once."""
    with database.writer.begin() as conn:
        insert_if_absent(
            conn, capture_state, {"slot_name": slot, "state": STREAMING, "updated_at": now}
        )
        holder = _holder(conn, slot)
        assert holder is not None  # (inserted above)
        other = holder.consumer not in (None, consumer)
        if other and holder.consumer_until >= now and not consumer_gone(holder.consumer):
            return SlotHolder(holder.consumer, holder.consumer_until)
        taken = conn.execute(
            capture_state.update()
            .where(
                capture_state.c.slot_name == slot,
                capture_state.c.consumer.is_not_distinct_from(holder.consumer),
            )
            .values(consumer=consumer, consumer_until=now + lease)
        ).rowcount
    if not taken:  # another process took it between the two statements
        with database.reader.connect() as conn:
            row = _holder(conn, slot)
        assert row is not None
        return SlotHolder(row.consumer, row.consumer_until)
    if other:
        log.warning(
            "segment_membership.capture.slot_taken_over",
            slot=slot,
            consumer=consumer,
            previous=holder.consumer,
            reason="lease lapsed" if holder.consumer_until < now else "its process has ended",
        )
    return None


def consumer_gone(consumer: str) -> bool:
    """Whether a consumer named ``host:pid`` ran on this host and its process has ended (a pid
    used again by another process reads as alive: its lease then decides, as for other hosts)."""
    host, _, pid = consumer.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid))


def _holder(conn: sa.Connection, slot: str) -> sa.Row[tuple[str | None, datetime | None]] | None:
    """The slot's ``consumer`` and ``consumer_until`` as recorded (None: no row yet)."""
    return conn.execute(
        sa.select(capture_state.c.consumer, capture_state.c.consumer_until).where(
            capture_state.c.slot_name == slot
        )
    ).one_or_none()


def release_consumer(database: StoreDatabase, slot: str, consumer: str) -> None:
    with database.writer.begin() as conn:
        conn.execute(
            capture_state.update()
            .where(capture_state.c.slot_name == slot, capture_state.c.consumer == consumer)
            .values(consumer=None, consumer_until=None)
        )


def live_consumer(database: StoreDatabase, slot: str, now: datetime) -> str | None:
    """The capture process holding the slot now, if any (not one whose lease lapsed, nor one
    that ran on this host and has ended)."""
    with database.reader.connect() as conn:
        row = _holder(conn, slot)
    if row is None or row.consumer is None or row.consumer_until < now:
        return None
    if consumer_gone(row.consumer):
        return None
    return str(row.consumer)
