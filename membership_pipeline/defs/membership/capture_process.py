"""``membership-capture``: change data capture as a long-running process, for trait writes
published in seconds. Every ``interval`` seconds it renews its hold on the slot (a lease in the
store: one consumer at a time, and the capture sensor stands aside), drains a batch through the
dispatcher (``drain_once``: the same guard, caps, dedup and cooldown as every request), and
executes each delta or incremental launch itself, in-process, as a run of the job the dispatcher
chose in the Dagster instance (``$DAGSTER_HOME``). Its kernels and connections stay warm between
runs, and no run waits for the daemon's sensor loop, its run queue or a new process. Full
backfills (a new slot's refresh) stay queued for the daemon's dispatch sensor, whose executor
runs them in shards; while no daemon runs to do so, the process says so, once a minute.

SIGINT or SIGTERM stops it after the current tick; a killed process loses nothing (the slot
keeps what was not recorded). A process started again on the same host takes the slot over at
its first tick (the dead one's process is gone); elsewhere, when the dead one's lease lapses
(``LEASE``), and it says so while it waits. The daemon's capture sensor takes over likewise.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import dagster as dg

from membership_pipeline.changes.capture import SlotHolder, hold_consumer, release_consumer
from membership_pipeline.defs.dagster_instance import InstanceUnavailable, open_instance
from membership_pipeline.defs.membership.awaiting_daemon import waiting_for_daemon
from membership_pipeline.defs.membership.capture_sensor import Drained, drain_once
from membership_pipeline.defs.membership.resources import (
    ChangeCaptureResource,
    DispatchPolicyResource,
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.step_server import preload_in_background
from membership_pipeline.dispatch.requests import BackfillRequest
from membership_pipeline.structured_logging import get_logger

log = get_logger("capture")
DEFAULT_PROCESS_INTERVAL = 1.0
LEASE = timedelta(seconds=30)  # the sensor takes over this long after the process stops
NOTICE_EVERY = 60.0  # seconds between two notices of the same wait
STATEMENT_TIMEOUT_MS = 60_000  # of the instance storage's statements


def quick(request: BackfillRequest) -> bool:
    """What the process launches itself: deltas and incremental backfills."""
    return request.mode != "full"


def run_capture(
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    interval: float = DEFAULT_PROCESS_INTERVAL,
    ticks: int | None = None,
    stop: threading.Event | None = None,
    report: Callable[[Drained, list[dg.ExecuteInProcessResult]], None] = lambda *_: None,
    say: Callable[[str], None] = lambda _: None,
) -> None:
    """Drain, launch, sleep; ``ticks`` times (None: until ``stop`` is set or a signal).
    ``say``: a one-line notice for the operator (waiting for the slot's holder, or full
    backfills waiting for a daemon)."""
    if stop is None:  # SIGINT or SIGTERM stop it, until it returns
        with _stop_on_signals() as stop:
            return run_capture(
                definitions,
                instance,
                interval=interval,
                ticks=ticks,
                stop=stop,
                report=report,
                say=say,
            )
    # The engine and its compiled kernels load now, beside the first ticks, not in the first
    # delta's evaluate (about 0.6 s of its run).
    preload_in_background()
    consumer = f"{socket.gethostname()}:{os.getpid()}"
    # A long-lived process writing runs' events: hold pooled connections to the instance's
    # storage as the webserver does (dagster-postgres otherwise connects once per event, about
    # half a second per run; SQLite storage ignores this).
    instance.optimize_for_webserver(
        statement_timeout=STATEMENT_TIMEOUT_MS, pool_recycle=3600, max_overflow=5
    )
    keys = ("flagsmith", "membership_store", "dispatch_policy", "change_capture")
    with dg.build_resources({k: definitions.resources[k] for k in keys}) as resources:
        flagsmith: FlagsmithSourceResource = resources.flagsmith
        store_resource: MembershipStoreResource = resources.membership_store
        policy: DispatchPolicyResource = resources.dispatch_policy
        change_capture: ChangeCaptureResource = resources.change_capture
        store = store_resource.get()
        log.info(
            "segment_membership.capture.process_started",
            consumer=consumer,
            slot=change_capture.slot,
            interval=interval,
        )
        done = 0
        frozen = False
        notices = _Notices(say)
        # Every run of this process uses the process's own store and source (their pools stay
        # connected between runs) instead of building, connecting and closing them per run.
        shared = {
            "flagsmith": dg.ResourceDefinition.hardcoded_resource(flagsmith),
            "membership_store": dg.ResourceDefinition.hardcoded_resource(store_resource),
        }
        runner = ThreadPoolExecutor(1, thread_name_prefix="capture-runs")
        try:
            with flagsmith.kept_open(), change_capture.consumer(flagsmith.url) as capture:
                while not stop.is_set() and (ticks is None or done < ticks):
                    started = time.monotonic()
                    holder = hold_consumer(
                        store.database,
                        change_capture.slot,
                        consumer,
                        now=store.clock(),
                        lease=LEASE,
                    )
                    if holder is None:
                        drained = drain_once(capture, flagsmith, store_resource, policy, quick)
                        # Runs execute on another thread: Dagster installs its own SIGINT
                        # handler around a run on the main thread (which would fail the run and
                        # keep the process going); on this one, a signal stops the process
                        # after the tick, as asked, and the run completes.
                        runs = runner.submit(
                            lambda requests=drained.run_requests: [
                                _execute(definitions, instance, r, shared) for r in requests
                            ]
                        ).result()
                        report(drained, runs)
                        if runs and not frozen:
                            _freeze_what_stays()
                            frozen = True
                        if drained.tick.refresh or notices.due("daemon"):
                            notices.say(
                                "daemon", waiting_for_daemon(store, instance, store.clock())
                            )
                    else:
                        log.warning(
                            "segment_membership.capture.slot_held",
                            consumer=consumer,
                            slot=change_capture.slot,
                            holder=holder.consumer,
                            lease_until=holder.until.isoformat(),
                        )
                        notices.say("holder", _held_by(holder, change_capture.slot), holder)
                    done += 1
                    stop.wait(max(interval - (time.monotonic() - started), 0))
        finally:
            runner.shutdown()
            release_consumer(store.database, change_capture.slot, consumer)
            log.info("segment_membership.capture.process_stopped", consumer=consumer)


class _Notices:
    """One-line notices for the operator: each kind said when it starts, when what it names
    changes, and then at most once every ``NOTICE_EVERY`` seconds while it lasts; and what a
    notice costs to find out (queries) asked at most that often."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say
        self._said: dict[str, tuple[float, object]] = {}
        self._looked: dict[str, float] = {}

    def due(self, kind: str) -> bool:
        """Whether to look into ``kind`` now (then not again for ``NOTICE_EVERY`` seconds)."""
        now = time.monotonic()
        if now - self._looked.get(kind, -NOTICE_EVERY) < NOTICE_EVERY:
            return False
        self._looked[kind] = now
        return True

    def say(self, kind: str, line: str | None, subject: object = None) -> None:
        """``line`` about ``subject``; None: that wait is over."""
        if line is None:
            self._said.pop(kind, None)
            return
        now = time.monotonic()
        said = self._said.get(kind)
        if said is not None and said[1] == subject and now - said[0] < NOTICE_EVERY:
            return
        self._said[kind] = (now, subject)
        log.warning("segment_membership.capture.notice", kind=kind, notice=line)
        self._say(line)


def _held_by(holder: SlotHolder, slot: str) -> str:
    until = holder.until.strftime("%H:%M:%S")
    return (
        f"slot {slot} is held by the capture process {holder.consumer} (its lease runs until "
        f"{until} UTC and is renewed while it runs): waiting. If that process has stopped, "
        "this one takes over when the lease lapses; stop it to hand over now."
    )


def _execute(
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    request: dg.RunRequest,
    resources: dict[str, dg.ResourceDefinition],
) -> dg.ExecuteInProcessResult:
    """The launch, as a run of its job in this process (the store's claim guards it, as it
    guards every run), with ``resources`` in place of the definitions' own."""
    job = definitions.resolve_job_def(request.job_name or "")
    config: Any = request.run_config
    return job.execute_in_process(
        run_config=config,
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
        raise_on_error=False,
        resources=resources,
    )


def _freeze_what_stays() -> None:
    """After the first run: what it loaded (Dagster's job and instance state, the engine, the
    source's and store's pools) lives as long as the process, so it leaves the cyclic garbage
    collector's generations (``gc.freeze``) after one last collection. Otherwise each full
    collection walks all of it: measured at 10M identities, a 0.16-0.26 s pause in about half
    of the delta runs, 0.02 s frozen."""
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event SIGINT and SIGTERM set while in the context; the previous handlers after."""
    stop = threading.Event()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> None:
    """``membership-capture [--interval S] [--ticks N]``: the deployment's settings are its
    ``MEMBERSHIP_*`` variables (as for the daemon); runs are recorded in ``$DAGSTER_HOME``."""
    parser = argparse.ArgumentParser(
        prog="membership-capture", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--interval", type=float, default=DEFAULT_PROCESS_INTERVAL)
    parser.add_argument("--ticks", type=int, help="stop after this many ticks")
    args = parser.parse_args(argv)
    try:
        instance = open_instance()
    except InstanceUnavailable as error:
        raise SystemExit(f"membership-capture: {error}") from None
    from membership_pipeline.defs.membership.definitions import membership_definitions
    from membership_pipeline.defs.membership.deployment import Deployment

    def report(drained: Drained, runs: list[dg.ExecuteInProcessResult]) -> None:
        tick = drained.tick
        if tick.pending or runs or tick.detail:
            print(
                f"{time.strftime('%H:%M:%S')} {len(tick.pending):,} changed identities in "
                f"{len(tick.changed)} environments; {sum(r.success for r in runs)} of {len(runs)} "
                "runs succeeded" + (f"; {tick.detail}" if tick.detail else ""),
                flush=True,
            )

    print(f"membership-capture: every {args.interval:g} s (Ctrl-C stops)", flush=True)
    with instance:
        definitions = membership_definitions(Deployment.current())
        run_capture(
            definitions,
            instance,
            interval=args.interval,
            ticks=args.ticks,
            report=report,
            say=lambda line: print(f"{time.strftime('%H:%M:%S')} {line}", flush=True),
        )
