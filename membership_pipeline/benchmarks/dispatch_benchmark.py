"""Benchmark: one dispatch tick over 10,000 environments with 1,000 pending requests.

    membership-benchmark-dispatch [--environments N] [--requests R] [--backend B]

For each store backend it fills the store with N environments' metadata (a mix of succeeded,
running and cooling-down ones, in 100 organisations), queues R requests (some overlapping, to
coalesce), then times the store's part of a dispatch sensor tick: read every environment's
metadata (what change detection does when it found changes; the source's part is
``membership-benchmark-changes``), then the dispatch tick —
read the queue, the guard of the queued environments, the dedup locks and the launch log;
decide; record. Target: ≤ 2 s per tick (Dagster's sensor limit is 60 s).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import timedelta

import sqlalchemy as sa

from membership_pipeline.benchmarks.scratch_database import ScratchDatabase, progress
from membership_pipeline.database.schema import migrate
from membership_pipeline.dispatch.dispatcher import dispatch_tick
from membership_pipeline.dispatch.policy import PolicySettings
from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.requests import BackfillRequest, Reason
from membership_pipeline.dispatch.tables import backfill_request, dedup_lock, launch
from membership_pipeline.storage import MembershipStore
from membership_pipeline.storage.tables import environment

TARGET_SECONDS = 2.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--environments", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1_000)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    print(
        f"dispatch benchmark: {args.environments:,} environments, {args.requests:,} pending "
        f"requests, median of {args.ticks} ticks"
    )
    for backend in backends:
        with ScratchDatabase(backend) as url:
            migrate(url)
            with MembershipStore(url, cooldown=timedelta(seconds=60)) as store:
                progress(f"{backend}: filling the store")
                _fill(store, args.environments)
                seconds, decided = [], ""
                for _ in range(args.ticks):
                    _queue(store, args.environments, args.requests)
                    started = time.perf_counter()
                    published = {m.environment_key: m.published_as_of for m in store.all_metadata()}
                    compared = sum(1 for as_of in published.values() if as_of is not None)
                    result = dispatch_tick(
                        DatabaseQueue(store.database), store, PolicySettings(), store.clock()
                    )
                    seconds.append(time.perf_counter() - started)
                    decided = result.summary()
                    _drain(store)
            median = statistics.median(seconds)
            verdict = "ok" if median <= TARGET_SECONDS else "MISSED"
            print(
                f"  {backend:<11}tick {median:.3f} s (max {max(seconds):.3f} s)   target ≤ "
                f"{TARGET_SECONDS} s: {verdict}   [{compared:,} environments compared; {decided}]"
            )


def _fill(store: MembershipStore, count: int) -> None:
    now = store.clock()
    statuses = ["succeeded"] * 8 + ["running", "failed"]
    rows = []
    for i in range(count):
        status = statuses[i % len(statuses)]
        finished = now - timedelta(seconds=30 if i % 7 == 0 else 3600)  # some cooling down
        rows.append(
            {
                "environment_key": f"env_{i:05d}",
                "last_backfill_status": status,
                "last_backfill_started_at": finished - timedelta(seconds=20),
                "last_backfill_completed_at": None if status == "running" else finished,
                "claim_owner": f"run-{i}",
                "claim_token": "t" if status == "running" else None,
                "claim_lease_expires_at": now + timedelta(minutes=5)
                if status == "running"
                else None,
                "published_version_id": i + 1,
                "publication": 1,
                "published_as_of": finished - timedelta(seconds=20),
                "published_identity_count": 1000,
                "published_segment_count": 10,
                "updated_at": now,
            }
        )
    with store.database.writer.begin() as conn:
        conn.execute(sa.delete(environment))
        conn.execute(environment.insert(), rows)


def _queue(store: MembershipStore, environments: int, count: int) -> None:
    rng = random.Random(count)
    now = store.clock()
    requests = []
    for _ in range(count):
        i = rng.randrange(environments)
        start = now - timedelta(minutes=rng.randrange(120))
        requests.append(
            BackfillRequest.new(
                organisation=f"org_{i % 100}",
                environment=f"env_{i:05d}",
                window_start=start,
                window_end=start + timedelta(minutes=rng.randrange(10)),
                reason=rng.choice(list(Reason)),
                created_at=now - timedelta(minutes=rng.randrange(60)),
            )
        )
    DatabaseQueue(store.database).enqueue(requests)


def _drain(store: MembershipStore) -> None:
    with store.database.writer.begin() as conn:
        for table in (backfill_request, dedup_lock, launch):
            conn.execute(sa.delete(table))


if __name__ == "__main__":
    main()
