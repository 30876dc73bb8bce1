"""Benchmark: trait writes published through change data capture, end to end, with the Dagster
daemon running the definitions as a deployment would (PostgreSQL source and store).

    membership-benchmark-capture [--identities 1000000] [--segments 300] [--tick 2]
        [--via process|sensor] [--repeats 3] [--sustain-seconds 60] [--writes-per-second 1000]
        [--large-identities 10000000] [--cached-chunk-cache-mb 1024]

In order: the source is seeded into a scratch schema (one environment); capture is enabled (a
scratch publication and slot, dropped at the end); ``dagster-daemon run`` starts, with
``membership-capture --interval TICK`` beside it (``--via process``, the default) or the
daemon's capture sensor at ``--tick`` seconds (``--via sensor``), and ``membership serve`` (the
read API); capture's first tick requests a full refresh, which the daemon runs: the first
version. Once its run has ended and what it wrote is on disk (CHECKPOINT, sync: the figures are
of a steady environment, not of one writing back a fresh load), then:

- per repeat, after 3 s idle (past the 2 s change cooldown) and a random part of a tick,
  ``--updates`` (1,000) trait updates across as many identities in one transaction: commit →
  the read API answering from the new version (polled every 20 ms), and the delta run's
  RUN_START → RUN_SUCCESS (Dagster's event log), with the bytes the delta version wrote
  against the full version's, and the run's longest pauses between events;
- per repeat, after the same idle time, a segment edit (one condition's value): commit → the
  read API's new version, and the incremental run;
- per repeat, a segment edit and ``--updates`` trait updates in one transaction: commit → the
  read API's new version, the delta run that publishes both, and the versions made (one);
- an idle tick: ``ChangeCapture.look`` on a drained slot (median of 50);
- ``--writes-per-second`` trait updates for ``--sustain-seconds``: every second the slot's lag
  and retained WAL; then the time until every change is published, and a check that the
  published answers equal a full backfill of the final source.

With ``--large-identities``, capture is then turned off, the environment grown in PostgreSQL
(copies of its first 1M identities and their traits), and everything but the sustained load
measured again on a new slot (its first tick refreshes the grown environment in full): the
ratios of the medians, and the delta step's peak RSS beside the full backfill's. With
``--cached-chunk-cache-mb``, each size's trait updates are measured again after the capture
process restarts with a chunk cache that large.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from membership_pipeline.benchmarks.dagster_runs import materialize
from membership_pipeline.benchmarks.scratch_database import (
    ScratchDatabase,
    ScratchServerDatabase,
    analyze,
    grow_environment,
    progress,
    seed_one_environment,
)
from membership_pipeline.changes.capture import CaptureSettings, ChangeCapture, capture_status
from membership_pipeline.database.schema import migrate
from membership_pipeline.defs.membership.capture_process import quick
from membership_pipeline.defs.membership.capture_sensor import drain_once
from membership_pipeline.defs.membership.resources import (
    DispatchPolicyResource,
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.project_files import PROJECT_ROOT as ROOT
from membership_pipeline.serving.api_keys import Scope, add_key
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.sources.replication import disable_capture, enable_capture, slot_state
from membership_pipeline.storage import MembershipStore
from membership_pipeline.storage.tables import version

# Before each measured write: longer than the change cooldown (2 s), so every write meets an
# idle environment as an SDK's occasional write does (back-to-back writes wait out the
# cooldown: the sustained part measures those).
IDLE_GAP = 3.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--tick", type=int, default=2, help="capture interval, seconds")
    parser.add_argument("--via", choices=["process", "sensor"], default="process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--updates",
        type=int,
        default=1_000,
        help="trait updates (of as many identities) per repeat",
    )
    parser.add_argument("--sustain-seconds", type=int, default=60, help="0: skip that part")
    parser.add_argument("--writes-per-second", type=int, default=1_000)
    parser.add_argument(
        "--large-identities",
        type=int,
        default=0,
        help="then grow the environment to this many (copies of the first 1M) and measure "
        "again, with capture off while it grows (0: skip)",
    )
    parser.add_argument(
        "--cached-chunk-cache-mb",
        type=int,
        default=0,
        help="then repeat the trait updates with the capture process's chunk cache this large "
        "(MEMBERSHIP_CHUNK_CACHE_MB; 0: skip)",
    )
    parser.add_argument(
        "--dagster-storage",
        choices=["postgresql", "sqlite"],
        default="postgresql",
        help="the Dagster instance's storage: PostgreSQL as deployed (deploy/dagster.postgres.yaml"
        ", a scratch database), or the embedded default",
    )
    parser.add_argument(
        "--keep-home",
        action="store_true",
        help="keep each run's DAGSTER_HOME (the daemon's and capture process's logs) and say where",
    )
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as scratch:
        source_url = scratch.enter_context(ScratchDatabase("postgresql"))
        store_url = scratch.enter_context(ScratchDatabase("postgresql"))
        if args.dagster_storage == "postgresql":
            os.environ["DAGSTER_PG_URL"] = scratch.enter_context(ScratchServerDatabase())
        progress(f"seeding {args.identities:,} identities × {args.segments} segments")
        started = time.perf_counter()
        dataset = seed_one_environment(source_url, args.identities, args.segments)
        analyze(source_url)
        progress(f"seeded in {time.perf_counter() - started:.0f} s")
        migrate(store_url)
        small = Bench(source_url, store_url, args).run(args.identities, args.sustain_seconds)
        if args.large_identities > args.identities:
            env_key = dataset.environments[0]["api_key"]
            size = grow_environment(source_url, env_key, args.large_identities, args.identities)
            large = Bench(source_url, store_url, args).run(size, sustain_seconds=0)
            print(
                f"{size:,} against {args.identities:,} identities: commit → read API "
                f"{large['read'] / small['read']:.2f}×, delta run "
                f"{large['run'] / small['run']:.2f}×, bytes per delta "
                f"{large['bytes'] / max(small['bytes'], 1):.2f}×, delta step peak RSS "
                f"{large['delta_rss']:,.0f} MB against the full backfill's "
                f"{large['full_rss']:,.0f} MB"
            )
            if "cached_run" in large and "cached_run" in small:
                print(
                    f"with a {args.cached_chunk_cache_mb} MB chunk cache: commit → read API "
                    f"{large['cached_read'] / small['cached_read']:.2f}×, delta run "
                    f"{large['cached_run'] / small['cached_run']:.2f}×, delta step peak RSS "
                    f"{large['cached_delta_rss']:,.0f} MB"
                )


class Bench:
    def __init__(self, source_url: str, store_url: str, args: argparse.Namespace) -> None:
        self.source_url, self.store_url, self.args = source_url, store_url, args
        with FlagsmithSource(source_url) as source:
            self.info = source.environments()[0]
        self.env = self.info.api_key
        with sa.create_engine(source_url).connect() as conn:
            self.id_range = tuple(
                conn.execute(
                    sa.text(
                        "SELECT min(id), max(id) FROM environments_identity "
                        "WHERE environment_id = :e"
                    ),
                    {"e": self.info.id},
                ).one()
            )
        name = f"mp_bench_capture_{uuid.uuid4().hex[:8]}"
        self.settings = CaptureSettings(slot=name, publication=name)
        self.engine = sa.create_engine(source_url)
        self.home = tempfile.mkdtemp(prefix="membership-capture-home-")
        instance_yaml = (
            ROOT / "deploy" / "dagster.postgres.yaml"
            if args.dagster_storage == "postgresql"
            else ROOT / "dagster.yaml"
        )
        shutil.copy(instance_yaml, Path(self.home) / "dagster.yaml")
        self.environ = {
            **os.environ,
            "DAGSTER_HOME": self.home,
            "MEMBERSHIP_SOURCE_URL": source_url,
            "MEMBERSHIP_STORE_URL": store_url,
            "MEMBERSHIP_CAPTURE_SLOT": name,
            "MEMBERSHIP_CAPTURE_PUBLICATION": name,
            "MEMBERSHIP_CAPTURE_INTERVAL_SECONDS": str(args.tick),
        }
        self.processes: list[subprocess.Popen] = []
        self.capture_process: subprocess.Popen | None = None

    def run(self, identities: int, sustain_seconds: int) -> dict[str, float]:
        """Every scenario on the environment as it is; the medians to compare sizes by."""
        args = self.args
        try:
            enable_capture(self.engine, self.settings.publication, self.settings.slot)
            started = time.time()
            # Capture's first tick requests a full refresh (what changed before the slot is
            # unknown), which the daemon's dispatch sensor launches: the first version.
            self._start_daemon_and_server(identities)
            full_bytes = self._version_bytes()[0]
            full_rss = self._peak_rss()
            progress(
                f"first version (capture's full refresh through the daemon) published "
                f"{time.time() - started:.0f} s after start: {full_bytes:,} bytes, steps' peak "
                f"RSS {full_rss:,.0f} MB"
            )
            self._settle()
            print(
                f"capture benchmark: {identities:,} identities × {args.segments} segments, "
                f"capture every {args.tick} s by the {args.via} (PostgreSQL source and store, "
                f"{args.dagster_storage} Dagster storage)"
            )
            figures = self._trait_updates(full_bytes)
            figures |= {"delta_rss": self._peak_rss(), "full_rss": full_rss}
            if args.cached_chunk_cache_mb and self.capture_process is not None:
                # The same writes with a chunk cache that holds every payload (the first delta
                # after the restart fills it).
                _stop(self.capture_process)
                self.environ["MEMBERSHIP_CHUNK_CACHE_MB"] = str(args.cached_chunk_cache_mb)
                self.capture_process = self._start_capture_process()
                progress(f"capture process restarted, chunk cache {args.cached_chunk_cache_mb} MB")
                cached = self._trait_updates(full_bytes)
                figures |= {f"cached_{name}": value for name, value in cached.items()}
                figures["cached_delta_rss"] = self._peak_rss()
                self.environ.pop("MEMBERSHIP_CHUNK_CACHE_MB")
            self._segment_edit()
            self._edit_with_writes()
            self._idle_tick()
            if sustain_seconds > 0:
                self._sustained(sustain_seconds)
            return figures
        finally:
            for process in self.processes:
                _stop(process)
            disable_capture(self.engine, self.settings.publication, self.settings.slot)
            self.engine.dispose()
            if args.keep_home:
                progress(f"kept DAGSTER_HOME {self.home} (daemon.log, capture.log, capture.out)")
            else:
                shutil.rmtree(self.home, ignore_errors=True)

    def _settle(self) -> None:
        """Before the measured writes: the first version's run has ended (its vacuum of the
        answers runs after the flip), and what seeding, growing and backfilling wrote is on
        disk (a CHECKPOINT, then the OS's sync): no figure depends on when the writeback of
        a fresh load happens (growing to 10M and backfilling it write gigabytes)."""
        started = time.time()
        self._last_run("full")  # waits for it to end
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("CHECKPOINT")
        os.sync()
        progress(f"settled in {time.time() - started:.1f} s (full run ended, CHECKPOINT, sync)")

    # -- the scenarios ---------------------------------------------------------------------
    def _trait_updates(self, full_bytes: int) -> dict[str, float]:
        reads, runs, written = [], [], []
        for repeat in range(self.args.repeats):
            self._idle(repeat)
            before = self._served_version()
            committed = self._update_traits(self.args.updates, random.Random(repeat))
            served = self._wait_for_new_version(before)
            reads.append(served - committed)
            runs.append(self._last_run_seconds("delta"))
            written.append(self._version_bytes())
            progress(f"timeline after the commit (s): {self._timeline(committed, served, 'delta')}")
            progress(f"the delta step's phases (s): {self._phases()}")
            progress(f"the delta run's longest pauses between events (s): {self._gaps('delta')}")
            print(
                f"  {self.args.updates:,} trait updates across {self.args.updates:,} identities: "
                "commit → read API "
                f"{served - committed:.2f} s; delta run (RUN_START → RUN_SUCCESS) "
                f"{runs[-1]:.2f} s; version wrote {written[-1][0]:,} bytes, linked/shared "
                f"{written[-1][1]:,}"
            )
        print(
            f"trait updates: commit → read API median {statistics.median(reads):.2f} s (max "
            f"{max(reads):.2f}); delta run median {statistics.median(runs):.2f} s; bytes written "
            f"per delta version median {statistics.median(w[0] for w in written):,.0f} vs "
            f"{full_bytes:,} for the full version "
            f"({statistics.median(w[0] for w in written) / max(full_bytes, 1):.1%})"
        )
        return {
            "read": statistics.median(reads),
            "run": statistics.median(runs),
            "bytes": statistics.median(w[0] for w in written),
        }

    def _segment_edit(self) -> None:
        reads, runs = [], []
        for repeat in range(self.args.repeats):
            self._idle(repeat)
            before = self._served_version()
            with self.engine.begin() as conn:
                _edit_condition(conn, repeat)
            committed = time.time()
            served = self._wait_for_new_version(before)
            reads.append(served - committed)
            runs.append(self._last_run_seconds("incremental"))
            progress(
                f"timeline after the commit (s): {self._timeline(committed, served, 'incremental')}"
            )
            progress(f"the incremental step's phases (s): {self._phases()}")
            progress(f"the incremental run's longest pauses (s): {self._gaps('incremental')}")
            print(
                f"  segment edit: commit → read API {reads[-1]:.2f} s (incremental run "
                f"{runs[-1]:.2f} s)"
            )
        print(
            f"segment edits: commit → read API median {statistics.median(reads):.2f} s (max "
            f"{max(reads):.2f}); incremental run median {statistics.median(runs):.2f} s"
        )

    def _edit_with_writes(self) -> None:
        """A segment edit and trait writes in one transaction: one delta run publishes both
        (the edited segment on every identity, the written identities on every segment)."""
        reads, runs = [], []
        for repeat in range(self.args.repeats):
            self._idle(repeat)
            before = self._served_version()
            started = time.time()
            first, last = self.id_range
            ids = random.Random(f"edit {repeat}").sample(range(first, last + 1), self.args.updates)
            with self.engine.begin() as conn:
                _edit_condition(conn, self.args.repeats + repeat)
                _update_trait_rows(conn, ids)
            committed = time.time()
            served = self._wait_for_new_version(before)
            reads.append(served - committed)
            runs.append(self._last_run_seconds("delta"))
            progress(f"timeline after the commit (s): {self._timeline(committed, served, 'delta')}")
            progress(f"the delta step's phases (s): {self._phases()}")
            made = self._versions_since(started)
            print(
                f"  segment edit with {self.args.updates:,} trait updates: commit → read API "
                f"{reads[-1]:.2f} s (delta run {runs[-1]:.2f} s); versions made: {len(made)}"
            )
            for line in made:
                progress(line)
        print(
            f"segment edits with trait updates: commit → read API median "
            f"{statistics.median(reads):.2f} s (max {max(reads):.2f}); delta run median "
            f"{statistics.median(runs):.2f} s"
        )

    def _idle_tick(self) -> None:
        """Measured alone: a slot serves one session at a time (the process's ticks would
        make some of these find it busy), so the capture process pauses meanwhile."""
        time.sleep(self.args.tick * 2)  # the consumer drains what is left
        if self.capture_process is not None:
            _stop(self.capture_process)
        flagsmith = FlagsmithSourceResource(url=self.source_url)
        store = MembershipStoreResource(url=self.store_url)
        policy = DispatchPolicyResource()
        looks, drains = [], []
        with ChangeCapture(self.source_url, self.settings) as capture:
            for _ in range(50):
                started = time.perf_counter()
                tick = capture.look(store.get().database, lambda: [])
                looks.append(time.perf_counter() - started)
                assert not tick.pending, "the benchmark wrote nothing meanwhile"
                started = time.perf_counter()
                drain_once(capture, flagsmith, store, policy, quick)
                drains.append(time.perf_counter() - started)
        store.get().close()
        if self.capture_process is not None:
            self.capture_process = self._start_capture_process()
        print(
            f"idle tick: the slot read (ChangeCapture.look) median "
            f"{statistics.median(looks) * 1000:.1f} ms (max {max(looks) * 1000:.1f}); the whole "
            f"tick (drain_once: capture state, slot, queue) median "
            f"{statistics.median(drains) * 1000:.1f} ms (max {max(drains) * 1000:.1f})"
        )

    def _sustained(self, seconds: int) -> None:
        args = self.args
        stop = threading.Event()
        written = [0]
        last_commit = [0.0]

        def writer() -> None:
            rng = random.Random(99)
            per_batch = max(args.writes_per_second // 10, 1)
            next_at = time.time()
            while not stop.is_set():
                last_commit[0] = self._update_traits(per_batch, rng, quiet=True)
                written[0] += per_batch
                next_at += 0.1
                time.sleep(max(next_at - time.time(), 0))

        thread = threading.Thread(target=writer, daemon=True)
        samples = []
        started = time.time()
        thread.start()
        while time.time() - started < seconds:
            time.sleep(1)
            with self.engine.connect() as conn:
                state = slot_state(conn, self.settings.slot)
            samples.append((state.lag_bytes or 0, state.retained_bytes or 0))
        stop.set()
        thread.join()
        elapsed = time.time() - started
        with MembershipStore(self.store_url) as store:
            deadline = time.time() + 120
            while time.time() < deadline:
                meta = store.metadata(self.env)
                if (
                    not store.pending_identities(self.env).ids
                    and meta is not None
                    and meta.last_backfill_status != "running"
                    and meta.published_as_of is not None
                    and meta.published_as_of.timestamp() >= last_commit[0]
                ):
                    break
                time.sleep(0.2)
            drained = time.time() - last_commit[0]
            published = store.reader().published(self.env)
            counts = published.segment_counts()
            universe = published.universe()
        last = samples[-10:]
        windows = [samples[i : i + 30] for i in range(0, len(samples), 30)]
        progress(
            "retained WAL max per 30 s (MB): "
            + ", ".join(f"{max(s[1] for s in w) / 1e6:.0f}" for w in windows)
            + "; slot lag max per 30 s (MB): "
            + ", ".join(f"{max(s[0] for s in w) / 1e6:.0f}" for w in windows)
        )
        with dg.DagsterInstance.from_config(self.home) as instance:
            deltas = len(
                instance.get_run_records(
                    dg.RunsFilter(tags={"membership/mode": "delta"}, created_after=_utc(started))
                )
            )
        print(
            f"sustained {written[0] / elapsed:,.0f} trait writes/s for {elapsed:.0f} s "
            f"({deltas} delta runs): slot lag max {max(s[0] for s in samples) / 1e6:.1f} MB "
            f"(last 10 s: {max(s[0] for s in last) / 1e6:.1f}), retained WAL max "
            f"{max(s[1] for s in samples) / 1e6:.1f} MB (last 10 s: "
            f"{max(s[1] for s in last) / 1e6:.1f}); every change published {drained:.1f} s "
            "after the last commit"
        )
        for line in self._versions_since(started):
            progress(line)
        with ScratchDatabase("postgresql") as full_url:
            migrate(full_url)
            materialize(self.home, self.source_url, full_url, self.env, 500_000)
            with MembershipStore(full_url) as full:
                reference = full.reader().published(self.env)
                same = reference.segment_counts() == counts and reference.universe() == universe
                same = same and all(
                    reference.bitmap(k) == published.bitmap(k) for k in list(counts)[:300]
                )
        verdict = "yes" if same else "NO"
        print(f"published answers equal a full backfill of the final source: {verdict}")

    # -- helpers ---------------------------------------------------------------------------
    def _idle(self, repeat: int) -> None:
        """``IDLE_GAP``, then a random part of one capture interval: each measured write lands
        at a random point of the capture process's tick, as an SDK's does (with a fixed pause
        the loop would keep step with the ticks and measure one phase of them every time)."""
        time.sleep(IDLE_GAP + random.Random(f"idle {repeat}").uniform(0, self.args.tick))

    def _versions_since(self, started: float) -> list[str]:
        """One line per version of the environment made since ``started``: its mode, the
        identities a delta re-evaluated, created → published seconds, and its step phases."""
        with MembershipStore(self.store_url) as store:
            with store.database.reader.connect() as conn:
                rows = conn.execute(
                    sa.select(
                        version.c.version_id,
                        version.c.mode,
                        version.c.delta_identity_count,
                        version.c.created_at,
                        version.c.published_at,
                        version.c.state,
                    )
                    .where(version.c.environment_key == self.env)
                    .where(version.c.created_at >= _utc(started))
                    .order_by(version.c.version_id)
                ).all()
            lines = []
            for row in rows:
                reports = [r.report for r in store.shard_reports(row.version_id)]
                seconds: dict[str, float] = {}
                for report in reports:
                    for phase, value in report.get("seconds", {}).items():
                        seconds[phase] = round(seconds.get(phase, 0.0) + value, 3)
                took = (
                    f"{(row.published_at - row.created_at).total_seconds():.2f} s"
                    if row.published_at
                    else row.state
                )
                lines.append(
                    f"version {row.version_id} ({row.mode}, "
                    f"{row.delta_identity_count or 0:,} identities re-evaluated, made at "
                    f"+{row.created_at.timestamp() - started:.1f} s): created → published "
                    f"{took}; phases {seconds}"
                )
        return lines

    def _update_traits(self, count: int, rng: random.Random, quiet: bool = False) -> float:
        """``count`` trait rows of ``count`` different identities get a new value, in one
        transaction; returns the commit's time."""
        first, last = self.id_range
        with self.engine.begin() as conn:
            _update_trait_rows(conn, rng.sample(range(first, last + 1), count))
        if not quiet:
            progress(f"committed {count:,} trait updates")
        return time.time()

    def _served_version(self) -> int:
        request = urllib.request.Request(
            f"{self.base}/v1/environments/{self.env}",
            headers={"Authorization": f"Bearer {self.key}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(json.load(response)["version"])

    def _wait_for_new_version(self, before: int, timeout: float = 120) -> float:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._served_version() != before:
                return time.time()
            time.sleep(0.02)
        raise SystemExit(f"no new version of {self.env} within {timeout:.0f} s")

    def _last_run_seconds(self, mode: str) -> float:
        return self._last_run(mode)["run"]

    def _last_run(self, mode: str) -> dict[str, Any]:
        """The latest run of ``mode`` once it succeeded (the read API may see its version
        before its last events): when it was made, when the queue let it start, RUN_START,
        RUN_SUCCESS (epoch seconds), its run time, and its run_id."""
        with dg.DagsterInstance.from_config(self.home) as instance:
            deadline = time.time() + 30
            while time.time() < deadline:
                records = instance.get_run_records(
                    dg.RunsFilter(tags={"membership/mode": mode}), limit=1
                )
                if records and records[0].dagster_run.status in (
                    dg.DagsterRunStatus.SUCCESS,
                    dg.DagsterRunStatus.FAILURE,
                ):
                    break
                time.sleep(0.1)
            if not records:
                return {"run": float("nan")}
            record = records[0]
            times = {"created": record.create_timestamp.timestamp()}
            run_id = record.dagster_run.run_id
            for event in instance.all_logs(record.dagster_run.run_id):
                kind = event.dagster_event_type
                if kind is not None and kind.name in ("RUN_DEQUEUED", "RUN_START", "RUN_SUCCESS"):
                    times.setdefault(kind.name, event.timestamp)
        times["run"] = times.get("RUN_SUCCESS", 0) - times.get("RUN_START", 0)
        return times | {"run_id": run_id}

    def _gaps(self, mode: str, shown: int = 6) -> str:
        """Where the latest run of ``mode`` spends RUN_START → RUN_SUCCESS: its longest pauses
        between consecutive events of Dagster's event log, each named by the event that ends it
        (its type, step, and the start of its message)."""
        run = self._last_run(mode)
        if "run_id" not in run:
            return "no run"
        with dg.DagsterInstance.from_config(self.home) as instance:
            events = [
                e
                for e in instance.all_logs(str(run["run_id"]))
                if e.timestamp >= run.get("RUN_START", 0)
            ]
        pauses = []
        for before, after in itertools.pairwise(events):
            kind = after.dagster_event_type.name if after.dagster_event_type else "log"
            what = f"{kind} {after.step_key or ''} {after.user_message[:50]!r}".strip()
            pauses.append((after.timestamp - before.timestamp, what))
        pauses.sort(reverse=True)
        longest = "; ".join(f"{s:.3f} before {w}" for s, w in pauses[:shown])
        return f"{len(events)} events; {longest}"

    def _timeline(self, committed: float, served: float, mode: str) -> str:
        times = self._last_run(mode)
        marks = [
            ("sensor made the run", times.get("created")),
            ("dequeued", times.get("RUN_DEQUEUED")),
            ("RUN_START", times.get("RUN_START")),
            ("RUN_SUCCESS", times.get("RUN_SUCCESS")),
            ("read API", served),
        ]
        return ", ".join(f"{name} +{at - committed:.2f}" for name, at in marks if at)

    def _peak_rss(self) -> float:
        """The published version's largest step peak RSS (MB)."""
        with MembershipStore(self.store_url) as store:
            meta = store.metadata(self.env)
            assert meta is not None and meta.published_version_id is not None
            reports = store.shard_reports(meta.published_version_id)
        return max(float(r.report.get("peak_rss_mb", 0)) for r in reports)

    def _phases(self) -> dict[str, float]:
        """The published version's step reports: seconds per phase (summed over its shards),
        and the largest step peak RSS (MB)."""
        with MembershipStore(self.store_url) as store:
            meta = store.metadata(self.env)
            assert meta is not None and meta.published_version_id is not None
            reports = [r.report for r in store.shard_reports(meta.published_version_id)]
        seconds: dict[str, float] = {}
        for report in reports:
            for phase, value in report.get("seconds", {}).items():
                seconds[phase] = round(seconds.get(phase, 0.0) + value, 3)
        return seconds | {
            "shards": len(reports),
            "peak_rss_mb": max(r.get("peak_rss_mb", 0) for r in reports),
        }

    def _version_bytes(self) -> tuple[int, int]:
        """The published version's bytes written, and those it links to or shares."""
        with MembershipStore(self.store_url) as store, store.database.reader.connect() as conn:
            meta = store.metadata(self.env)
            assert meta is not None
            row = conn.execute(
                sa.select(version.c.byte_size, version.c.shared_byte_size).where(
                    version.c.version_id == meta.published_version_id
                )
            ).one()
        return int(row.byte_size or 0), int(row.shared_byte_size or 0)

    def _start_capture_process(self) -> subprocess.Popen:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "membership-capture"), "--interval",
             str(self.args.tick)],
            env=self.environ, cwd=ROOT, stdout=open(Path(self.home) / "capture.out", "a"),  # noqa: SIM115
            stderr=open(Path(self.home) / "capture.log", "a"),  # noqa: SIM115
            start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        return process

    def _start_daemon_and_server(self, identities: int) -> None:
        bin_dir = Path(sys.executable).parent
        with dg.DagsterInstance.from_config(self.home) as instance:
            instance.add_dynamic_partitions("environments", [self.env])
        self.processes.append(
            subprocess.Popen(
                [str(bin_dir / "dagster-daemon"), "run", "-m", "membership_pipeline.definitions"],
                env=self.environ, cwd=ROOT, stdout=subprocess.DEVNULL,
                stderr=open(Path(self.home) / "daemon.log", "w"),  # noqa: SIM115
                start_new_session=True,
            )
        )  # fmt: skip
        if self.args.via == "process":
            self.capture_process = self._start_capture_process()
        keys = Path(self.home) / "keys.json"
        self.key = add_key(keys, "benchmark", [Scope("environment", self.env)])
        port = 18_500 + os.getpid() % 500
        self.base = f"http://127.0.0.1:{port}"
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "membership_pipeline.cli", "--store-url", self.store_url,
                 "--source-url", self.source_url, "serve", "--port", str(port), "--api-keys",
                 str(keys)],
                env=self.environ, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )  # fmt: skip
        wait = 300 + 60 * identities // 1_000_000
        started = datetime.now(UTC)
        deadline = time.time() + wait
        while time.time() < deadline:  # capture's full refresh is served, and capture streams
            try:
                self._served_version()
                with MembershipStore(self.store_url) as store:
                    status = capture_status(store.database, self.settings.slot)
                    meta = store.metadata(self.env)
                    if (
                        status is not None
                        and meta
                        and meta.last_backfill_status == "succeeded"
                        and meta.published_as_of is not None
                        and meta.published_as_of >= started
                    ):
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        log = (Path(self.home) / "daemon.log").read_text()[-3000:]
        raise SystemExit(
            f"no first version, or no capture, or no read API within {wait} s; daemon:\n{log}"
        )


def _edit_condition(conn: sa.Connection, offset: int) -> None:
    """The ``offset``-th EQUAL condition compares with another value: its segment is edited."""
    condition = conn.execute(
        sa.text(
            "SELECT c.id, c.value FROM segments_condition c WHERE c.operator = 'EQUAL' "
            "ORDER BY c.id LIMIT 1 OFFSET :n"
        ),
        {"n": offset},
    ).one()
    conn.execute(
        sa.text("UPDATE segments_condition SET value = :v WHERE id = :id"),
        {"v": f"{condition.value}-edited", "id": condition.id},
    )


def _update_trait_rows(conn: sa.Connection, ids: list[int]) -> None:
    """A trait row of each identity of ``ids`` gets a new value."""
    conn.execute(
        sa.text(
            "UPDATE environments_trait SET integer_value = integer_value + 1, "
            "string_value = string_value || 'x' WHERE id IN (SELECT DISTINCT ON "
            "(identity_id) id FROM environments_trait WHERE identity_id = ANY(:ids) "
            "ORDER BY identity_id, id)"
        ),
        {"ids": ids},
    )


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _stop(process: subprocess.Popen) -> None:
    """SIGINT (dagster-daemon and uvicorn shut down on it), then SIGKILL of the group."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main()
