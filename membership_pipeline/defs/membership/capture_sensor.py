"""Change data capture in Dagster: each tick drains a bounded batch of the source's replication
slot, records the changed identities in the store and requests their delta backfills (segment
edits: an incremental one; the dispatcher merges an edit and the deltas of one environment into
one delta that does both) through the dispatcher, in one store transaction; then confirms the
slot (``drain_once``, shared by the sensor and the ``membership capture run`` process).

Two ways to run it, one at a time (the process holds the slot by a lease in the store, and the
sensor stands aside while it does):

- ``identity_capture_sensor``, in the Dagster daemon beside the other sensors: nothing more to
  run. Dagster's daemon evaluates sensors at most every 5 s and its run queue dequeues every few
  seconds, and each run starts a process: a trait write is published in about 10-20 s.
- ``membership capture run`` (``capture_process.py``), a long-running process supervised like
  the daemon: it drains every second or two and executes each delta (and segment-edit) run
  itself, in-process, as a Dagster run of ``segment_membership_edit`` in the instance (its events,
  materialization and check in the UI): a trait write is published in seconds. Full backfills it
  requests (after a new slot) are left in the queue for the daemon's dispatch sensor.

Where logical replication is unavailable (``wal_level`` is not ``logical``, no REPLICATION
privilege, not enabled), each tick says so, and so does ``membership status``; change detection
(new rows above watermarks) and the refresh schedule keep environments fresh as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import dagster as dg

from membership_pipeline.changes.capture import (
    BUSY,
    UNAVAILABLE,
    CaptureTick,
    ChangeCapture,
    capture_status,
    live_consumer,
)
from membership_pipeline.defs.membership.jobs import bitmaps_job, edit_job
from membership_pipeline.defs.membership.resources import (
    ChangeCaptureResource,
    DispatchPolicyResource,
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.run_requests import enqueue_and_dispatch, skip_reason
from membership_pipeline.dispatch.intake import RequestIntake
from membership_pipeline.dispatch.policy import TickResult
from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.requests import BackfillRequest
from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.sources.pgoutput import format_lsn
from membership_pipeline.structured_logging import get_logger

log = get_logger("capture")
STATE_HEARTBEAT = timedelta(seconds=60)  # an idle streaming tick re-records its state this often


@dataclass
class Drained:
    """One capture tick through the dispatcher."""

    tick: CaptureTick
    run_requests: list[dg.RunRequest] = field(default_factory=list)
    result: TickResult | None = None  # None: nothing to dispatch (a quiet or unavailable tick)

    def skip_reason(self) -> dg.SkipReason:
        tick = self.tick
        if tick.state == BUSY:
            return dg.SkipReason(tick.detail)
        if tick.state == UNAVAILABLE:
            return dg.SkipReason(
                f"change capture is off: {tick.detail}. Change detection and the refresh "
                "schedule keep environments fresh."
            )
        if self.result is None:
            return dg.SkipReason("no changes")
        said = (
            f"{len(tick.pending)} changed identities in {len(tick.changed)} environments, "
            f"{len(tick.segments_changed)} with segment edits"
            + (f"; {tick.detail}" if tick.detail else "")
        )
        return dg.SkipReason(f"{said}; {skip_reason(self.result).skip_message}")


def drain_once(
    capture: ChangeCapture,
    flagsmith: FlagsmithSourceResource,
    membership_store: MembershipStoreResource,
    dispatch_policy: DispatchPolicyResource,
    eligible: Callable[[BackfillRequest], bool] | None = None,
) -> Drained:
    """Read a batch; record it, its position and its requests in one store transaction and
    run a dispatch tick (over the ``eligible`` requests); then confirm the slot."""
    store = membership_store.get()
    now = store.clock()
    before = capture_status(store.database, capture.settings.slot)
    tick = capture.look(store.database, lambda: _live(flagsmith), before)
    if tick.state == BUSY:
        return Drained(tick)
    if tick.state == UNAVAILABLE:
        if before is None or (before.state, before.detail) != (UNAVAILABLE, tick.detail):
            log.warning("segment_membership.capture.unavailable", reason=tick.detail)
            with store.database.writer.begin() as conn:
                tick.save(conn, now)
        return Drained(tick)
    quiet = (
        not (tick.pending or tick.segments_changed or tick.refresh)
        and tick.batch.transactions == 0
        and before is not None
        and before.state == tick.state
        and now - before.updated_at < STATE_HEARTBEAT
    )
    waiting = [r for r in DatabaseQueue(store.database).pending() if r.mode != "full"]
    if quiet and not any(eligible is None or eligible(r) for r in waiting):
        capture.confirm(tick)  # the slot moves past WAL the publication had nothing in
        return Drained(tick)  # nothing new, and no delta or edit waiting (for its cooldown)
    published = {m.environment_key: m.published_as_of for m in store.all_metadata()}
    requests = RequestIntake(dispatch_policy.max_attempts).captured(
        tick.changed, tick.segments_changed, tick.refresh, published, now
    )
    run_requests, result = enqueue_and_dispatch(
        membership_store,
        dispatch_policy,
        requests,
        now,
        also=lambda conn: tick.save(conn, now),
        eligible=eligible,
    )
    capture.confirm(tick)
    batch = tick.batch
    log.info(
        "segment_membership.capture.recorded",
        state=tick.state,
        transactions=batch.transactions,
        messages=batch.messages,
        identities=len(tick.pending),
        environments=sorted(e.api_key for e in tick.changed),
        segment_environments=sorted(e.api_key for e in tick.segments_changed),
        refreshed=len(tick.refresh),
        position=format_lsn(tick.position) if tick.position else None,
        already_recorded=batch.already_recorded,
        skipped=len(batch.skipped),
        launched=len(run_requests),
    )
    return Drained(tick, run_requests, result)


def capture_sensor(interval: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="identity_capture_sensor",
        jobs=[bitmaps_job, edit_job],
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Change data capture: drains the source's logical replication slot, records "
        "the identities whose traits changed and requests their delta backfills (a segment "
        "edit: an incremental one) through the dispatcher; confirms the slot after the store "
        "committed. Stands aside while a `membership capture run` process holds the slot; off, "
        "with the reason, where logical replication is unavailable.",
    )
    def identity_capture_sensor(
        context: dg.SensorEvaluationContext,
        flagsmith: FlagsmithSourceResource,
        membership_store: MembershipStoreResource,
        dispatch_policy: DispatchPolicyResource,
        change_capture: ChangeCaptureResource,
    ) -> dg.SensorResult | dg.SkipReason:
        store = membership_store.get()
        holder = live_consumer(store.database, change_capture.slot, store.clock())
        if holder is not None:
            return dg.SkipReason(f"capture runs in the process {holder}")
        with change_capture.consumer(flagsmith.url) as capture:
            drained = drain_once(capture, flagsmith, membership_store, dispatch_policy)
        if drained.run_requests:
            return dg.SensorResult(run_requests=drained.run_requests)
        return drained.skip_reason()

    return identity_capture_sensor


def _live(flagsmith: FlagsmithSourceResource) -> list[EnvironmentInfo]:
    with flagsmith.open() as source:
        return source.environments()
