"""Benchmark: read one 1,000,000-identity environment from PostgreSQL and from SQLite.

    membership-benchmark-source [--identities N] [--backend sqlite|postgresql|both]
                                [--unreferenced-traits 17]

For each backend it writes a demo Flagsmith database holding one environment of N identities
(about three traits each, plus ``--unreferenced-traits`` of keys no segment reads), then reads
it ``--repeats`` times, each in a fresh process: seconds (the median against the targets), rows
per second and the peak RSS of reading, and the seconds of evaluating its segments and the peak
RSS of both. On PostgreSQL it first reads once right after the bulk load (the server then sets
every row's hint bits, a cost only a freshly loaded table has) and runs VACUUM ANALYZE, as
autovacuum does to a live table, before the measured reads. Targets (PostgreSQL, 1M
identities): read ≤ 3 s, evaluate ≤ 2.5 s, peak RSS ≤ 1 GB.
PostgreSQL: the server of ``MEMBERSHIP_BENCH_POSTGRES_URL`` (default the local one), in a schema
made for the run and dropped after it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from membership_pipeline.benchmarks.scratch_database import (
    ScratchDatabase,
    analyze,
    progress,
    seed_one_environment,
)
from membership_pipeline.process_memory import peak_rss_mb, reset_peak_rss

TARGET_PEAK_RSS_MB = 1024
TARGET_READ_SECONDS = 3.0  # PostgreSQL, 1M identities
TARGET_EVALUATE_SECONDS = 2.5


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--unreferenced-traits",
        type=int,
        default=0,
        help="more traits per identity of keys no segment reads (17: the wide shape)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="reads, each in a fresh process")
    parser.add_argument("--child", nargs=2, metavar=("URL", "API_KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(*args.child)))
        return
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    print(f"source benchmark: one environment of {args.identities:,} identities")
    for backend in backends:
        with ScratchDatabase(backend) as url:
            progress(f"{backend}: writing the demo database")
            started = time.perf_counter()
            written = seed_one_environment(
                url, args.identities, args.segments, args.unreferenced_traits
            )
            seeded = time.perf_counter() - started
            api_key = written.environments[0]["api_key"]
            just_loaded = None
            if backend == "postgresql":
                progress(f"{backend}: reading once right after the bulk load")
                just_loaded = _read_in_child(url, api_key)
                progress(f"{backend}: VACUUM ANALYZE, as autovacuum does to a live table")
                analyze(url)
            reads = []
            for attempt in range(args.repeats):
                progress(f"{backend}: reading in a fresh process ({attempt + 1} of {args.repeats})")
                reads.append(_read_in_child(url, api_key))
            _report(backend, written.traits, seeded, reads, just_loaded)


def _read_in_child(url: str, api_key: str) -> dict[str, float]:
    child = subprocess.run(
        [sys.executable, "-m", __spec__.name, "--child", url, api_key],  # type: ignore[name-defined]
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(child.stdout.splitlines()[-1])


def _measure(url: str, api_key: str) -> dict[str, float]:
    from membership_pipeline.evaluation import evaluate_environment
    from membership_pipeline.sources.flagsmith_source import FlagsmithSource

    source = FlagsmithSource(url)
    reset_peak_rss()
    started = time.perf_counter()
    snapshot = source.read_environment(api_key)
    read_seconds = time.perf_counter() - started
    read_peak = peak_rss_mb()
    started = time.perf_counter()
    result = evaluate_environment(
        snapshot.environment, snapshot.identities, snapshot.traits, snapshot.segments
    )
    evaluate_seconds = time.perf_counter() - started
    return {
        "read_seconds": read_seconds,
        "identities": len(snapshot.identities),
        "traits": len(snapshot.traits),
        "segments": len(snapshot.segments),
        "read_peak_mb": read_peak,
        "evaluate_seconds": evaluate_seconds,
        "total_peak_mb": peak_rss_mb(),
        "failed_segments": len(result.failures),
    }


def _report(
    backend: str,
    traits: int,
    seeded: float,
    reads: list[dict[str, float]],
    just_loaded: dict[str, float] | None,
) -> None:
    """The median of the reads (each in a fresh process) against the targets."""

    def median_of(name: str) -> float:
        return statistics.median(read[name] for read in reads)

    def check(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    read_s, evaluate_s = median_of("read_seconds"), median_of("evaluate_seconds")
    first = reads[0]
    rows = first["identities"] + first["traits"]
    peak = max(read["total_peak_mb"] for read in reads)
    read_target = (
        f"   target ≤ {TARGET_READ_SECONDS:g} s: {check(read_s <= TARGET_READ_SECONDS)}"
        if backend == "postgresql"
        else ""
    )
    each = ", ".join(f"{read['read_seconds']:.2f}" for read in reads)
    print(
        f"  {backend:<11} read {read_s:.2f} s (median of {each}): {first['identities']:,.0f} "
        f"identities + {first['traits']:,.0f} traits read of {traits:,} = "
        f"{rows / read_s:,.0f} rows/s, {first['segments']:.0f} segments{read_target}; "
        f"peak RSS reading {max(read['read_peak_mb'] for read in reads):,.0f} MB"
    )
    if just_loaded is not None:
        print(
            f"  {'':<11} right after the bulk load (before VACUUM: PostgreSQL sets every row's "
            f"hint bits on this first read) {just_loaded['read_seconds']:.2f} s"
        )
    each = ", ".join(f"{read['evaluate_seconds']:.2f}" for read in reads)
    print(
        f"  {'':<11} evaluate {evaluate_s:.2f} s (median of {each}; "
        f"{first['failed_segments']:.0f} failed segments)   target ≤ "
        f"{TARGET_EVALUATE_SECONDS:g} s: {check(evaluate_s <= TARGET_EVALUATE_SECONDS)}; "
        f"read + evaluate: peak RSS {peak:,.0f} MB   target ≤ {TARGET_PEAK_RSS_MB} MB: "
        f"{check(peak <= TARGET_PEAK_RSS_MB)}   (seeding took {seeded:.0f} s)"
    )


if __name__ == "__main__":
    main()
