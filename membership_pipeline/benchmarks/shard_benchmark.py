"""Benchmark: sharded backfills through ``dagster asset materialize``, PostgreSQL source and
store, on the multiprocess executor and on Celery workers.

    membership-benchmark-shards [--identities 10000000] [--shard-identities 1000000]
                                [--compare-identities 1000000] [--layout scattered|clustered]
                                [--trait-index covering|none] [--skip-large] [--skip-compare]
                                [--executors multiprocess celery] [--celery-processes 2]

1. compare: one environment of ``--compare-identities`` (default 1M, 300 segments) backfilled
   unsharded (one shard) and in two shards, alternating ``--repeats`` times (after ANALYZE, so
   neither pays for fresh tables): wall times, and the ratio of the medians (target: two shards
   ≤ 0.6 × one on two cores);
2. large: the same environment grown to ``--identities`` (default 10M) in shards of
   ``--shard-identities``: wall time, and per shard its identities, seconds read / evaluate /
   audit / write and the peak RSS of its step process; plus the peak RSS of every process of the
   run, sampled from /proc (target: every step ≤ 1.5 GB); and against the compare's two-shard
   runs (same machine, same run): the wall ratio (target ≤ 10× on the scattered layout, ≤ 7× on
   the clustered one) and the ratio of a shard's read seconds per identity (target ≤ 1.5×);
3. the same large backfill on each of ``--executors``, back to back: by default the
   multiprocess executor (one step per core) and then Dagster's Celery executor on one worker
   of ``--celery-processes`` (default 2) processes, deployed as the README's Scaling out says
   (``celery_workers.py``: RabbitMQ vhost, Dagster instance on PostgreSQL,
   ``deploy/celery.yaml``; the worker's start is not timed), with the ratio of their walls.
   A Celery pool process runs shard after shard, so the peak RSS a shard reports there is the
   largest of its process so far (deploy/celery.yaml replaces a process past 1.5 GB; the run
   says how many were).

``--layout``: how the trait rows lie on disk. ``scattered`` (the default) as a live deployment
leaves them (``live_layout``: written over time, rewritten and deleted, vacuumed); ``clustered``
each 1M copy's rows appended in one block, the layout most favourable to a read by id range.
``--trait-index covering`` (the default) creates the covering index the README tells operators
to create (``sources/trait_index.py``) before each measured size; ``none`` reads without it.

The large environment is the 1M one's identities and traits copied ``N / 1M`` times inside
PostgreSQL (new ids and identifiers): growing it to 10M takes about 9 min clustered and about
19 min scattered on this 2-core machine. Everything lives in scratch schemas dropped
afterwards (server: ``MEMBERSHIP_BENCH_POSTGRES_URL``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from membership_pipeline.benchmarks.dagster_runs import materialize as _backfill
from membership_pipeline.benchmarks.scratch_database import (
    BASE_IDENTITIES,
    CLUSTERED,
    LAYOUTS,
    SCATTERED,
    ScratchDatabase,
    grow_environment,
    progress,
    seed_one_environment,
    set_covering_index,
)
from membership_pipeline.benchmarks.scratch_database import analyze as _analyze
from membership_pipeline.database.schema import migrate

TARGET_RATIO = 0.6
TARGET_STEP_RSS_MB = 1536
TARGET_READ_RATIO = 1.5
# The large backfill's wall against the small one's, per 10× the identities, by layout.
TARGET_WALL_RATIO = {SCATTERED: 10.0, CLUSTERED: 7.0}
PHASES = ("read", "evaluate", "audit", "write")
EXECUTORS = ("multiprocess", "celery")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=10_000_000)
    parser.add_argument("--shard-identities", type=int, default=1_000_000)
    parser.add_argument("--compare-identities", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument(
        "--base-identities",
        type=int,
        default=BASE_IDENTITIES,
        help="the environment seeded, and copied to grow it",
    )
    parser.add_argument("--repeats", type=int, default=2, help="compare runs of each, alternating")
    parser.add_argument("--layout", choices=LAYOUTS, default=SCATTERED)
    parser.add_argument("--trait-index", choices=("covering", "none"), default="covering")
    parser.add_argument(
        "--executors",
        nargs="+",
        choices=EXECUTORS,
        default=list(EXECUTORS),
        help="the large backfill on each, back to back",
    )
    parser.add_argument(
        "--celery-processes", type=int, default=2, help="processes of the Celery worker"
    )
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-compare", action="store_true")
    args = parser.parse_args(argv)
    covering = args.trait_index == "covering"
    with ScratchDatabase("postgresql") as source_url, ScratchDatabase("postgresql") as store_url:
        migrate(store_url)
        base = min(args.base_identities, args.compare_identities, args.identities)
        progress(f"seeding one environment of {base:,} identities, {args.segments} segments")
        written = seed_one_environment(source_url, base, args.segments)
        env_key = written.environments[0]["api_key"]
        _analyze(source_url)  # planner statistics first: no run pays for a fresh table
        size = base
        compare: list[dict] = []
        with tempfile.TemporaryDirectory(prefix="membership-shards-") as home:
            Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            if not args.skip_compare:
                size = _prepare(source_url, env_key, args.compare_identities, size, args, covering)
                runs: dict[int, list[dict]] = {1: [], 2: []}
                for _ in range(args.repeats):  # alternating, so drift hits both alike
                    for shards in (1, 2):
                        shard_size = size + 1 if shards == 1 else -(-size // 2)
                        runs[shards].append(
                            _backfill(home, source_url, store_url, env_key, shard_size)
                        )
                _report_compare(size, runs[1], runs[2])
                compare = runs[2]
            if not args.skip_large:
                if args.skip_compare or args.identities > size:
                    size = _prepare(source_url, env_key, args.identities, size, args, covering)
                walls = {}
                for executor in args.executors:  # back to back, on the same environment
                    large = _backfill(
                        home, source_url, store_url, env_key, args.shard_identities,
                        executor=executor, celery_processes=args.celery_processes,
                    )  # fmt: skip
                    workers = args.celery_processes if executor == "celery" else None
                    _report_large(size, args.shard_identities, large, args.layout, compare,
                                  executor, workers)  # fmt: skip
                    walls[executor] = large["wall"]
                if len(walls) == len(EXECUTORS):
                    print(
                        f"celery / multiprocess wall: {walls['celery']:.1f} / "
                        f"{walls['multiprocess']:.1f} s = "
                        f"{walls['celery'] / walls['multiprocess']:.2f}"
                    )


def _prepare(
    url: str, env_key: str, wanted: int, size: int, args: argparse.Namespace, covering: bool
) -> int:
    """The environment at ``wanted`` identities in the chosen layout, with or without the
    covering index (built after the rows, as on a live table; its build time is printed)."""
    started = time.perf_counter()
    set_covering_index(url, False)  # kept up while growing, it would only slow the growth
    size = grow_environment(url, env_key, wanted, size, args.layout, args.base_identities)
    progress(
        f"{size:,} identities laid out ({args.layout}) in {time.perf_counter() - started:.0f} s"
    )
    if covering:
        started = time.perf_counter()
        set_covering_index(url, True)
        progress(f"covering index built in {time.perf_counter() - started:.0f} s")
    return size


def _report_compare(size: int, one: list[dict], two: list[dict]) -> None:
    walls = {
        name: statistics.median(r["wall"] for r in runs) for name, runs in (("1", one), ("2", two))
    }
    ratio = walls["2"] / walls["1"]
    ok = "ok" if ratio <= TARGET_RATIO else "MISSED"
    print(f"compare: {size:,} identities, dagster asset materialize, multiprocess executor")
    for name, runs in (("1 shard ", one), ("2 shards", two)):
        each = ", ".join(f"{r['wall']:.1f}" for r in runs)
        flips = ", ".join(f"{r['to_flip']:.1f}" for r in runs)
        print(
            f"  {name}: wall {each} s (start → flip {flips} s), largest process peak "
            f"{max(r['process_peaks'][0] for r in runs):,.0f} MB; last run's shards:"
        )
        _print_shards(runs[-1]["shards"])
    print(
        f"  median wall: 2 shards / 1 shard = {walls['2']:.1f} / {walls['1']:.1f} s = "
        f"{ratio:.2f}   target ≤ {TARGET_RATIO}: {ok}"
    )


def _report_large(
    size: int,
    shard_identities: int,
    run: dict,
    layout: str,
    compare: list[dict],
    executor: str,
    celery_processes: int | None,
) -> None:
    peak = run["process_peaks"][0]
    ok = "ok" if peak <= TARGET_STEP_RSS_MB else "MISSED"
    where = (
        f"Celery executor, one worker of {celery_processes} processes"
        if celery_processes
        else f"{executor} executor"
    )
    print(f"large: {size:,} identities in shards of {shard_identities:,}, traits {layout}, {where}")
    print(
        f"  wall {run['wall']:.1f} s (start → flip {run['to_flip']:.1f} s), "
        f"{len(run['shards'])} shards, published {run['identities']:,} identities"
        + (
            f", {run['worker_steps']} steps run by the worker, {run['processes_replaced']} pool "
            "processes replaced at worker_max_memory_per_child"
            if "worker_steps" in run
            else ""
        )
    )
    _print_shards(run["shards"])
    print(
        f"  every process of the run: peak RSS ≤ {peak:,.0f} MB over {len(run['process_peaks'])} "
        f"processes   target ≤ {TARGET_STEP_RSS_MB} MB per step: {ok}"
    )
    if not compare:
        return
    small = statistics.median(r["wall"] for r in compare)
    small_size = compare[0]["identities"]
    wall_ratio = run["wall"] / small
    target = TARGET_WALL_RATIO[layout] * size / small_size / 10
    read_ratio = _read_per_identity(run["shards"]) / statistics.median(
        _read_per_identity(r["shards"]) for r in compare
    )
    print(
        f"  against {small_size:,} identities in 2 shards (median wall {small:.1f} s): wall "
        f"{wall_ratio:.1f}×   target ≤ {target:.1f}×: {'ok' if wall_ratio <= target else 'MISSED'}"
    )
    print(
        f"  a shard's read seconds per identity (median over shards): {read_ratio:.2f}× the "
        f"small environment's   target ≤ {TARGET_READ_RATIO}×: "
        f"{'ok' if read_ratio <= TARGET_READ_RATIO else 'MISSED'}"
    )


def _read_per_identity(shards: list) -> float:
    return statistics.median(
        float(s.report.get("seconds", {}).get("read", 0.0)) / max(s.identity_count or 0, 1)
        for s in shards
    )


def _print_shards(shards: list) -> None:
    for shard in shards:
        seconds = shard.report.get("seconds", {})
        print(
            f"    shard {shard.index:>3}: {shard.identity_count or 0:>10,} identities  "
            + "  ".join(
                f"{k} {seconds.get(k, 0):6.2f} s" for k in ("read", "evaluate", "audit", "write")
            )
            + f"  peak RSS {shard.report.get('peak_rss_mb', 0):,} MB"
        )


if __name__ == "__main__":
    main()
