"""The README's first command: seed a demo Flagsmith database, evaluate every environment from
it, print a summary.

    membership-demo [--url URL] [--identities N] [--reuse] [--verbose]

Until the bitmap store and the Dagster asset exist (issues #4 and #5) this runs source → engine
directly; it then becomes the materialization of every environment through Dagster on the
embedded SQLite default.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from membership_pipeline.evaluation import evaluate_environment
from membership_pipeline.sources.demo_dataset import DEFAULT_URL, write_demo_dataset
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.structured_logging import log_to_stderr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"database (default {DEFAULT_URL})")
    parser.add_argument("--identities", type=int, default=50_000, help="in the largest environment")
    parser.add_argument("--reuse", action="store_true", help="read the database as it is")
    parser.add_argument("--verbose", action="store_true", help="structured log events on stderr")
    args = parser.parse_args(argv)
    log_to_stderr(logging.INFO if args.verbose else logging.WARNING)

    if not args.reuse:
        started = time.perf_counter()
        written = write_demo_dataset(args.url, identities=args.identities)
        print(
            f"seeded {args.url}: {len(written.environments)} environments, "
            f"{written.identities:,} identities, {written.traits:,} traits "
            f"({time.perf_counter() - started:.1f} s)"
        )
    source = FlagsmithSource(args.url)
    try:
        for info in source.environments():
            started = time.perf_counter()
            snapshot = source.read_environment(info.api_key)
            read = time.perf_counter() - started
            result = evaluate_environment(
                snapshot.environment, snapshot.identities, snapshot.traits, snapshot.segments
            )
            print(
                f"\n{info.organisation_name} / environment {info.name} ({info.api_key}): "
                f"{len(result.universe):,} identities, {len(snapshot.traits):,} traits, "
                f"{len(result.segments)} segments ({len(result.failures)} failed); "
                f"read {read:.2f} s, evaluated {sum(result.timings.values()):.2f} s"
            )
            _print_top_segments(result.segments, result.segment_names, snapshot.segments, result)
    finally:
        source.close()
    sys.stdout.flush()


def _print_top_segments(
    bitmaps: dict[str, Any], names: dict[str, str], segments: list[dict], result: Any
) -> None:
    top = sorted(bitmaps.items(), key=lambda item: len(item[1]), reverse=True)[:5]
    print(f"  {'segment':<28}{'members':>10}{'share':>9}  rule")
    for key, bitmap in top:
        share = len(bitmap) / max(len(result.universe), 1)
        print(f"  {names[key]:<28}{len(bitmap):>10,}{share:>9.1%}  {_summary(segments, key)}")


def _summary(segments: list[dict], key: str) -> str:
    segment = next(s for s in segments if s["key"] == key)
    parts = []
    for rule in segment["rules"]:
        conditions = [
            f"{c['property'] or '<identity key>'} {c['operator']} {c['value']!r}"
            for c in rule.get("conditions") or ()
        ]
        joined = " & ".join(conditions) if rule["type"] == "ALL" else ", ".join(conditions)
        text = joined if rule["type"] == "ALL" else f"{rule['type']}({joined})"
        parts.append(text if conditions else f"{rule['type']}(nested rules)")
    text = " & ".join(parts)
    return text if len(text) <= 60 else text[:57] + "..."


if __name__ == "__main__":
    main()
