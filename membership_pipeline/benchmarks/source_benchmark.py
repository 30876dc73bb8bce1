"""Benchmark: read one 1,000,000-identity environment from PostgreSQL and from SQLite.

    membership-benchmark-source [--identities N] [--backend sqlite|postgresql|both]
                                [--unreferenced-traits 17]

For each backend it writes a demo Flagsmith database holding one environment of N identities
(about three traits each, plus ``--unreferenced-traits`` of keys no segment reads), then reads
it in a fresh process: seconds, rows per second and the peak RSS of reading, and the seconds of
evaluating its segments and the peak RSS of both. Targets (PostgreSQL, 1M identities): read
≤ 3 s, evaluate ≤ 2.5 s, peak RSS ≤ 1 GB.
PostgreSQL: the server of ``MEMBERSHIP_BENCH_POSTGRES_URL`` (default the local one), in a schema
made for the run and dropped after it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from membership_pipeline.benchmarks.scratch_database import (
    ScratchDatabase,
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
            progress(f"{backend}: reading in a fresh process")
            child = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    __spec__.name,
                    "--child",
                    url,  # type: ignore[name-defined]
                    written.environments[0]["api_key"],
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            _report(backend, written.traits, seeded, json.loads(child.stdout.splitlines()[-1]))


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


def _report(backend: str, traits: int, seeded: float, m: dict[str, float]) -> None:
    rows = m["identities"] + m["traits"]

    def check(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    read_target = (
        f"   target ≤ {TARGET_READ_SECONDS:g} s: {check(m['read_seconds'] <= TARGET_READ_SECONDS)}"
        if backend == "postgresql"
        else ""
    )
    print(
        f"  {backend:<11} read {m['read_seconds']:.2f} s: {m['identities']:,.0f} identities + "
        f"{m['traits']:,.0f} traits read of {traits:,} = {rows / m['read_seconds']:,.0f} rows/s, "
        f"{m['segments']:.0f} segments{read_target}; peak RSS reading "
        f"{m['read_peak_mb']:,.0f} MB\n"
        f"  {'':<11} evaluate {m['evaluate_seconds']:.2f} s ({m['failed_segments']:.0f} failed "
        f"segments)   target ≤ {TARGET_EVALUATE_SECONDS:g} s: "
        f"{check(m['evaluate_seconds'] <= TARGET_EVALUATE_SECONDS)}; read + evaluate: peak RSS "
        f"{m['total_peak_mb']:,.0f} MB   target ≤ {TARGET_PEAK_RSS_MB} MB: "
        f"{check(m['total_peak_mb'] <= TARGET_PEAK_RSS_MB)}   (seeding took {seeded:.0f} s)"
    )


if __name__ == "__main__":
    main()
