"""One capture process holds the slot at a time: a holder keeps it while its lease runs, unless
it ran on this host and its process has ended (a crash, then a restart here: taken over at the
next tick, not after the lease); the sensor stands aside for the same holders only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

import structlog

from membership_pipeline.changes.capture import (
    SlotHolder,
    hold_consumer,
    live_consumer,
    release_consumer,
)
from membership_pipeline_tests.backfill.test_incremental_exactness import fresh_store

SLOT = "mp_consumers"
LEASE = timedelta(seconds=30)
HOST = socket.gethostname()


def ended_process() -> str:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return f"{HOST}:{process.pid}"


def test_a_holder_keeps_the_slot_while_its_lease_runs(tmp_path):
    with fresh_store(tmp_path) as store:
        database, now = store.database, store.clock()
        me = f"{HOST}:{os.getpid()}"
        assert hold_consumer(database, SLOT, "elsewhere:4242", now=now, lease=LEASE) is None
        assert hold_consumer(database, SLOT, me, now=now, lease=LEASE) == SlotHolder(
            "elsewhere:4242", now + LEASE
        )
        assert live_consumer(database, SLOT, now) == "elsewhere:4242"
        later = now + LEASE + timedelta(seconds=1)
        assert live_consumer(database, SLOT, later) is None
        with structlog.testing.capture_logs() as events:
            assert hold_consumer(database, SLOT, me, now=later, lease=LEASE) is None
        [taken] = [e for e in events if e["event"] == "segment_membership.capture.slot_taken_over"]
        assert (taken["previous"], taken["reason"]) == ("elsewhere:4242", "lease lapsed")
        assert hold_consumer(database, SLOT, me, now=later, lease=LEASE) is None  # renewed
        release_consumer(database, SLOT, me)
        assert live_consumer(database, SLOT, later) is None


def test_a_holder_whose_process_on_this_host_ended_is_taken_over_at_once(tmp_path):
    with fresh_store(tmp_path) as store:
        database, now = store.database, store.clock()
        alive = f"{HOST}:{os.getppid()}"
        assert hold_consumer(database, SLOT, alive, now=now, lease=LEASE) is None
        assert hold_consumer(database, SLOT, f"{HOST}:{os.getpid()}", now=now, lease=LEASE)
        release_consumer(database, SLOT, alive)
        crashed = ended_process()
        assert hold_consumer(database, SLOT, crashed, now=now, lease=LEASE) is None
        assert live_consumer(database, SLOT, now) is None  # the sensor need not wait either
        restarted = f"{HOST}:{os.getpid()}"
        with structlog.testing.capture_logs() as events:
            assert hold_consumer(database, SLOT, restarted, now=now, lease=LEASE) is None
        [taken] = [e for e in events if e["event"] == "segment_membership.capture.slot_taken_over"]
        assert (taken["previous"], taken["reason"]) == (crashed, "its process has ended")
        assert live_consumer(database, SLOT, now) == restarted
