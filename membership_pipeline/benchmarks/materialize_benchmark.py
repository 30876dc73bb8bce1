"""Benchmark: one whole backfill, ``dagster asset materialize`` from process start to the flip,
PostgreSQL source and store, for both data shapes.

    membership-benchmark-materialize [--identities 1000000] [--segments 300]
        [--shapes narrow,wide] [--repeats 2] [--executor multiprocess|in_process]
        [--shard-identities N] [--narrow-url URL] [--wide-url URL] [--without-step-server]

Shapes: ``narrow``, the catalogue's traits only (about 3 per identity); ``wide``, 17 more per
identity of keys no segment reads (about 20 in all, as real Flagsmith identities carry). Each
shape is seeded into a scratch schema (the wide one takes minutes), or read from an existing
Flagsmith database given by ``--narrow-url`` / ``--wide-url`` (its first environment). Every run
is a fresh ``membership-run dagster asset materialize`` process with the project's configuration
(the default executor and shard size unless given; ``--without-step-server``: plain ``dagster``,
whose step server starts at the first step), timed from process start to the flip; per run it prints
the seconds of each phase of each shard (read, evaluate, audit, write) and the peak RSS of every
process of the run. Targets: start → flip ≤ 10 s, every process ≤ 1 GB.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from membership_pipeline.benchmarks.dagster_runs import materialize
from membership_pipeline.benchmarks.scratch_database import (
    ScratchDatabase,
    analyze,
    progress,
    seed_one_environment,
)
from membership_pipeline.database.schema import migrate
from membership_pipeline.model.shard_plan import DEFAULT_SHARD_IDENTITIES
from membership_pipeline.sources.flagsmith_source import FlagsmithSource

TARGET_SECONDS = 10.0
TARGET_PEAK_RSS_MB = 1024
SHAPES = {"narrow": 0, "wide": 17}
PHASES = ("read", "evaluate", "audit", "write")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--shapes", default="narrow,wide")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--executor", default="multiprocess", choices=["multiprocess", "in_process"]
    )
    parser.add_argument("--shard-identities", type=int, default=DEFAULT_SHARD_IDENTITIES)
    parser.add_argument("--narrow-url", help="an existing Flagsmith database (narrow shape)")
    parser.add_argument("--wide-url", help="an existing Flagsmith database (wide shape)")
    parser.add_argument(
        "--without-step-server",
        action="store_true",
        help="run plain `dagster asset materialize`, not through membership-run",
    )
    args = parser.parse_args(argv)
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape!r}: choose from {', '.join(SHAPES)}")
        given = getattr(args, f"{shape}_url")
        with ScratchDatabase("postgresql") as store_url, ScratchDatabase("postgresql") as scratch:
            source_url = given or _seed(scratch, args, shape)
            _run_shape(args, shape, source_url, store_url)


def _seed(url: str, args: argparse.Namespace, shape: str) -> str:
    progress(
        f"{shape}: seeding {args.identities:,} identities × {args.segments} segments "
        f"({SHAPES[shape]} unreferenced traits per identity)"
    )
    seed_one_environment(url, args.identities, args.segments, SHAPES[shape])
    analyze(url)
    return url


def _run_shape(args: argparse.Namespace, shape: str, source_url: str, store_url: str) -> None:
    with FlagsmithSource(source_url) as source:
        env_key = source.environments()[0].api_key
    migrate(store_url)
    runs = []
    with tempfile.TemporaryDirectory(prefix="membership-materialize-") as home:
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        for _ in range(args.repeats):
            runs.append(
                materialize(
                    home,
                    source_url,
                    store_url,
                    env_key,
                    args.shard_identities,
                    args.executor,
                    step_server=not args.without_step_server,
                )
            )
    _report(shape, args, runs)


def _report(shape: str, args: argparse.Namespace, runs: list[dict]) -> None:
    to_flip = [run["to_flip"] for run in runs]
    median = statistics.median(to_flip)
    peak = max(run["process_peaks"][0] for run in runs)
    last = runs[-1]
    print(
        f"materialize benchmark, {shape} shape: {last['identities']:,} identities, "
        f"{args.segments} segments, {args.executor} executor, shards of {args.shard_identities:,}"
        + (", without membership-run" if args.without_step_server else "")
    )
    print(
        f"  process start → flip: {', '.join(f'{s:.1f}' for s in to_flip)} s, median "
        f"{median:.1f} s   target ≤ {TARGET_SECONDS:.0f} s: "
        f"{'ok' if median <= TARGET_SECONDS else 'MISSED'}"
    )
    exits = ", ".join(f"{run['wall']:.1f}" for run in runs)
    print(f"  process exit: {exits} s")
    for shard in last["shards"]:
        seconds = shard.report.get("seconds", {})
        print(
            f"  shard {shard.index}: {shard.identity_count or 0:,} identities, "
            f"{shard.report.get('trait_rows', 0):,} trait rows read "
            f"(keys: {len(shard.report.get('trait_keys_read', []))}), "
            + ", ".join(f"{phase} {seconds.get(phase, 0.0):.2f} s" for phase in PHASES)
            + f", step peak RSS {shard.report.get('peak_rss_mb', 0):,} MB"
        )
    print(
        f"  peak RSS of every process of the runs ≤ {peak:,.0f} MB   target ≤ "
        f"{TARGET_PEAK_RSS_MB} MB: {'ok' if peak <= TARGET_PEAK_RSS_MB else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
