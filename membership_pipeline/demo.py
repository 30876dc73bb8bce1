"""The README's first command: seed a demo Flagsmith database, evaluate every environment from
it, publish the bitmaps to the membership store, print a summary read back from the store.

    membership-demo [--url URL] [--store-url URL] [--identities N] [--reuse] [--verbose]

Until the Dagster asset exists (issue #5) this runs source → engine → store directly, one
backfill per environment (claim, shadow version, publish); it then becomes the materialization
of every environment's partition through Dagster on the embedded SQLite default.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from membership_pipeline.evaluation import evaluate_environment
from membership_pipeline.sources.demo_dataset import DEFAULT_URL, write_demo_dataset
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import (
    DEFAULT_STORE_URL,
    Claim,
    MembershipStore,
    PublishedMembership,
    migrate,
    stage_membership_result,
)
from membership_pipeline.structured_logging import log_to_stderr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"database (default {DEFAULT_URL})")
    parser.add_argument(
        "--store-url",
        default=DEFAULT_STORE_URL,
        help=f"membership store (default {DEFAULT_STORE_URL})",
    )
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
    migrate(args.store_url)
    source = FlagsmithSource(args.url)
    store = MembershipStore(args.store_url)
    try:
        for info in source.environments():
            _backfill(source, store, info.api_key, f"{info.organisation_name} / {info.name}")
    finally:
        source.close()
        store.close()
    print(f"\nbitmaps published to {args.store_url}; query them with `membership --help`")
    sys.stdout.flush()


def _backfill(source: FlagsmithSource, store: MembershipStore, api_key: str, title: str) -> None:
    held = store.claim(api_key, "membership-demo", force=True)
    if not isinstance(held, Claim):
        print(f"\n{title} ({api_key}): skipped, {held.describe()}")
        return
    try:
        started = time.perf_counter()
        snapshot = source.read_environment(api_key)
        read = time.perf_counter() - started
        result = evaluate_environment(
            snapshot.environment, snapshot.identities, snapshot.traits, snapshot.segments
        )
        started = time.perf_counter()
        shadow = store.stage(held, as_of=snapshot.as_of)
        stage_membership_result(shadow, result)
        publication = store.publish(held, shadow)
        stored = time.perf_counter() - started
    except BaseException as error:
        store.fail(held, f"{type(error).__name__}: {error}")
        raise
    published = store.reader().published(api_key)
    print(
        f"\n{title} ({api_key}): {published.identity_count:,} identities, "
        f"{len(snapshot.traits):,} traits, {len(published.segment_keys)} segments "
        f"({len(published.failed_segments)} failed) → version {publication.version_id}, "
        f"{shadow.byte_size:,} bytes; read {read:.2f} s, evaluated "
        f"{sum(result.timings.values()):.2f} s, stored {stored:.2f} s"
    )
    _print_top_segments(published, snapshot.segments)


def _print_top_segments(published: PublishedMembership, segments: list[dict]) -> None:
    counts = published.segment_counts()
    top = sorted(counts.items(), key=lambda item: item[1], reverse=True)[:5]
    print(f"  {'segment':<28}{'members':>10}{'share':>9}  rule")
    for key, count in top:
        share = count / max(published.identity_count, 1)
        name = published.segment_name(key) or key
        print(f"  {name:<28}{count:>10,}{share:>9.1%}  {_summary(segments, key)}")


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
