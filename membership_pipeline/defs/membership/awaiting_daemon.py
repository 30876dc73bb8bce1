"""Full backfills that a capture process leaves to the Dagster daemon, when no daemon runs.

``membership-capture`` executes deltas and segment edits itself and leaves full backfills (an
environment a new slot cannot cover, a truncate) queued for the daemon's dispatch sensor, which
runs them sharded on the deployment's executor. Without a daemon they wait for ever, and the
deltas of their environments wait behind them (a queued full backfill covers them). This says
so, in one line, naming what to start."""

from __future__ import annotations

import os
import time
from datetime import datetime

import dagster as dg

from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.requests import describe_queued
from membership_pipeline.storage import MembershipStore

SENSOR_DAEMON = "SENSOR"  # the daemon that evaluates sensors (dispatch among them)
# Dagster's daemon beats every 30 s: two beats missed and a margin mean it is not running.
SILENT_SECONDS = 90


def sensor_daemon_running(instance: dg.DagsterInstance) -> bool:
    beat = instance.get_daemon_heartbeats().get(SENSOR_DAEMON)
    return beat is not None and time.time() - beat.timestamp < SILENT_SECONDS


def waiting_for_daemon(
    store: MembershipStore, instance: dg.DagsterInstance, now: datetime
) -> str | None:
    """One line when full backfills are queued and no daemon will launch them; else None."""
    full = [r for r in DatabaseQueue(store.database).pending() if r.mode == "full"]
    if not full or sensor_daemon_running(instance):
        return None
    home = os.environ.get("DAGSTER_HOME", "$DAGSTER_HOME")
    return (
        f"{len(full)} full backfill(s) wait for the Dagster daemon, and none runs on this "
        f"instance: start `dagster-daemon run` (or `dg dev`) with DAGSTER_HOME={home}; until "
        f"then their environments' deltas wait too ({describe_queued(full, now, shown=3)})"
    )
