"""The README's first command, the main job on the embedded default: seed a demo Flagsmith
database, then materialize every environment's partition of ``segment_membership_bitmaps``
through Dagster (claim → read → evaluate → audit → shadow write → flip) and print a summary per
environment, read back from the membership store.

    membership-demo [--url URL] [--store-url URL] [--identities N] [--reuse] [--verbose]

Dagster keeps its runs under ``$DAGSTER_HOME`` (default ``.membership/dagster_home``, created
with the project's ``dagster.yaml`` where the checkout has one), so ``dg dev`` shows the
materializations afterwards.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg

from membership_pipeline.database.schema import migrate
from membership_pipeline.defs.dagster_instance import InstanceUnavailable, open_instance
from membership_pipeline.demo.dataset import DEFAULT_URL, write_demo_dataset
from membership_pipeline.evaluation import kernels
from membership_pipeline.project_files import project_file
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import DEFAULT_STORE_URL, MembershipStore
from membership_pipeline.structured_logging import log_to_stderr

DEFAULT_DAGSTER_HOME = Path(".membership/dagster_home")


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
        written = write_demo_dataset(args.url, identities=args.identities, distinct_segments=True)
        print(
            f"seeded {args.url}: {len(written.environments)} environments, "
            f"{written.identities:,} identities, {written.traits:,} traits "
            f"({time.perf_counter() - started:.1f} s)"
        )
    if not kernels.cached():
        print("compiling the engine's kernels (the first run of a checkout; cached after) ...")
        sys.stdout.flush()
        print(f"  compiled in {kernels.warm():.0f} s")
    before, after = migrate(args.store_url)
    if before != after:
        print(f"created the membership store {args.store_url} (schema revision {after})")
    with FlagsmithSource(args.url) as source:
        environments = source.environments()
    try:
        instance = open_instance() if "DAGSTER_HOME" in os.environ else _local_instance()
    except (InstanceUnavailable, FileNotFoundError) as error:
        raise SystemExit(f"membership-demo: {error}") from None
    from membership_pipeline.defs.membership.materialize import materialize_environment

    print(f"materializing {len(environments)} partitions of segment_membership_bitmaps")
    with MembershipStore(args.store_url) as store:
        for info in environments:
            started = time.perf_counter()
            result = materialize_environment(
                instance, info.api_key, source_url=args.url, store_url=args.store_url
            )
            _print_environment(
                store,
                info.api_key,
                info.display_name,
                result,
                time.perf_counter() - started,
            )
    home = _shown(Path(os.environ["DAGSTER_HOME"]))
    print(
        f"\nbitmaps published to {args.store_url}; query them with `membership --help`.\n"
        f"Dagster runs are in {home}: see them with `DAGSTER_HOME={home} .venv/bin/dg dev`"
    )
    sys.stdout.flush()


def _local_instance() -> dg.DagsterInstance:
    """The demo's own instance, ``.membership/dagster_home`` with the project's dagster.yaml
    (the embedded default: SQLite storage, the queued run coordinator ``dg dev`` uses)."""
    home = DEFAULT_DAGSTER_HOME.resolve()
    if not (home / "dagster.yaml").exists():
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(project_file("dagster.yaml"), home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return open_instance()


def _shown(path: Path) -> str:
    """A folder under the working directory as ``$PWD/...`` (what a reader can paste)."""
    resolved = path.resolve()
    if resolved.is_relative_to(Path.cwd()):
        return f"$PWD/{resolved.relative_to(Path.cwd())}"
    return str(resolved)


def _print_environment(
    store: MembershipStore,
    api_key: str,
    title: str,
    result: dg.ExecuteInProcessResult,
    seconds: float,
) -> None:
    metadata = store.metadata(api_key)
    status = metadata.last_backfill_status if metadata else None
    print(
        f"\n{title} ({api_key}): run {result.run_id[:8]} {status or 'not run'} in {seconds:.1f} s"
    )
    if metadata is None or metadata.published_version_id is None:
        if metadata is not None and metadata.last_error:
            print(f"  error: {metadata.last_error}")
        return
    published = store.reader().published(api_key)
    counts = published.segment_counts()
    print(
        f"  version {published.version_id}: {published.identity_count:,} identities, "
        f"{len(published.segment_keys)} segments ({len(published.failed_segments)} failed)"
    )
    print(f"  {'segment':<32}{'members':>10}{'share':>9}")
    for key, count in sorted(counts.items(), key=lambda item: item[1], reverse=True)[:5]:
        share = count / max(published.identity_count, 1)
        print(f"  {(published.segment_name(key) or key)[:31]:<32}{count:>10,}{share:>9.1%}")


if __name__ == "__main__":
    main()
