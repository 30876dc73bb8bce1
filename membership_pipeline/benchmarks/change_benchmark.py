"""Benchmark: the dispatch sensor's tick (change detection included) on a large source.

    membership-benchmark-changes [--identities 1000000] [--source-url URL] [--ticks 7]

The source is a Flagsmith database on PostgreSQL holding one environment of N identities (about
three traits each) and 10 small ones (a scratch schema seeded for the run, or ``--source-url``:
any Flagsmith database with at least 11 live environments). The store is a scratch PostgreSQL
schema in which every environment has a published version. Then, through Dagster's
``build_sensor_context`` and the project's resources, it times:

* the first tick on the new store (it only sets the watermarks);
* ``--ticks`` ticks with nothing changed (the median against the target ≤ 100 ms);
* ``--ticks`` times: 1,000 new traits across 10 environments, then one tick (the median against
  ≤ 200 ms), checking that exactly those 10 environments were requested.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.benchmarks.scratch_database import (
    ScratchDatabase,
    analyze,
    progress,
    seed_one_environment,
)
from membership_pipeline.database.schema import migrate
from membership_pipeline.defs.membership.resources import (
    DispatchPolicyResource,
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.sensors import backfill_dispatch_sensor
from membership_pipeline.sources import flagsmith_tables as tables
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import Claim, MembershipStore

TARGET_QUIET_MS = 100
TARGET_CHANGED_MS = 200
SMALL_ENVIRONMENTS = 10
NEW_TRAITS = 1_000
PUBLISHED_AS_OF = datetime(2000, 1, 1, tzinfo=UTC)
# New trait keys of this run: a --source-url database may hold an earlier run's.
RUN_TAG = uuid.uuid4().hex[:8]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--source-url", help="an existing Flagsmith database (PostgreSQL)")
    parser.add_argument("--ticks", type=int, default=7)
    args = parser.parse_args(argv)
    with ScratchDatabase("postgresql") as store_url, ScratchDatabase("postgresql") as scratch:
        source_url = args.source_url or _seed(scratch, args)
        _run(args, source_url, store_url)


def _seed(url: str, args: argparse.Namespace) -> str:
    progress(f"seeding {args.identities:,} identities × {args.segments} segments")
    seed_one_environment(url, args.identities, args.segments)
    progress(f"adding {SMALL_ENVIRONMENTS} small environments")
    _add_small_environments(url, SMALL_ENVIRONMENTS)
    analyze(url)
    return url


def _add_small_environments(url: str, count: int, identities: int = 100) -> None:
    """Copies of the first environment (same project), each with a few identities."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        first = conn.execute(sa.select(tables.environments).limit(1)).mappings().one()
        env_id = conn.execute(sa.select(sa.func.max(tables.environments.c.id))).scalar_one()
        identity_id = conn.execute(sa.select(sa.func.max(tables.identities.c.id))).scalar_one()
        for n in range(count):
            env_id += 1
            conn.execute(
                sa.insert(tables.environments).values(
                    {**first, "id": env_id, "api_key": f"bench_small_{n}", "name": f"small {n}"}
                )
            )
            conn.execute(
                sa.insert(tables.identities),
                [
                    {
                        "id": identity_id + i + 1,
                        "identifier": f"small-{n}-{i}",
                        "environment_id": env_id,
                        "created_date": PUBLISHED_AS_OF,
                    }
                    for i in range(identities)
                ],
            )
            identity_id += identities
    engine.dispose()


def _run(args: argparse.Namespace, source_url: str, store_url: str) -> None:
    with FlagsmithSource(source_url) as source:
        live = source.environments()
    if len(live) < SMALL_ENVIRONMENTS + 1:
        raise SystemExit(f"the source needs {SMALL_ENVIRONMENTS + 1} live environments")
    migrate(store_url)
    with MembershipStore(store_url) as store:
        for environment in live:
            held = store.claim(environment.api_key, "benchmark", force=True)
            assert isinstance(held, Claim)
            shadow = store.stage(held, as_of=PUBLISHED_AS_OF)
            shadow.add_universe(BitMap([1]))
            store.publish(held, shadow)
    resources = {
        "flagsmith": FlagsmithSourceResource(url=source_url),
        "membership_store": MembershipStoreResource(url=store_url, cooldown_seconds=0),
        "dispatch_policy": DispatchPolicyResource(launches_per_organisation_per_minute=10_000),
    }
    counts = _table_sizes(source_url)
    with dg.instance_for_test() as instance:
        first, _ = _tick(instance, resources)
        quiet = [_tick(instance, resources)[0] for _ in range(args.ticks)]
        targets = live[1 : SMALL_ENVIRONMENTS + 1]
        changed, requested_ok = [], True
        for round_ in range(args.ticks):
            _add_traits(source_url, [e.id for e in targets], NEW_TRAITS, round_)
            seconds, requested = _tick(instance, resources)
            changed.append(seconds)
            requested_ok &= requested == sorted(e.api_key for e in targets)
    print(
        f"change detection benchmark: {counts['identities']:,} identities, "
        f"{counts['traits']:,} traits, {len(live)} environments (PostgreSQL source and store)"
    )
    print(f"  first tick on a new store (sets the watermarks)  {first * 1000:8.1f} ms")
    _line("nothing changed", quiet, TARGET_QUIET_MS)
    _line(
        f"{NEW_TRAITS:,} new traits in {SMALL_ENVIRONMENTS} environments",
        changed,
        TARGET_CHANGED_MS,
    )
    print(
        f"  every changed tick requested exactly the {SMALL_ENVIRONMENTS} environments: "
        f"{'yes' if requested_ok else 'NO'}"
    )


def _line(label: str, seconds: list[float], target_ms: float) -> None:
    median = statistics.median(seconds) * 1000
    each = ", ".join(f"{s * 1000:.0f}" for s in seconds)
    verdict = "ok" if median <= target_ms else "MISSED"
    print(f"  {label:<47} median {median:6.1f} ms ({each})   target ≤ {target_ms} ms: {verdict}")


def _tick(instance: dg.DagsterInstance, resources: dict[str, object]) -> tuple[float, list[str]]:
    started = time.perf_counter()
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = backfill_dispatch_sensor(context)
    seconds = time.perf_counter() - started
    return seconds, sorted(request.partition_key for request in result.run_requests)


def _add_traits(url: str, environment_ids: list[int], total: int, round_: int) -> None:
    engine = sa.create_engine(url)
    per_environment = total // len(environment_ids)
    with engine.begin() as conn:
        next_id = conn.execute(sa.select(sa.func.max(tables.traits.c.id))).scalar_one() + 1
        rows = []
        for environment_id in environment_ids:
            identities = conn.execute(
                sa.select(tables.identities.c.id)
                .where(tables.identities.c.environment_id == environment_id)
                .limit(per_environment)
            ).scalars()
            for identity in identities:
                rows.append(
                    {
                        "id": next_id + len(rows),
                        "identity_id": identity,
                        "trait_key": f"bench_{RUN_TAG}_{round_}",
                        "value_type": "unicode",
                        "string_value": "x",
                        "created_date": datetime.now(UTC),
                    }
                )
        conn.execute(sa.insert(tables.traits), rows)
    engine.dispose()


def _table_sizes(url: str) -> dict[str, int]:
    """Estimated rows (planner statistics: counting would scan what the benchmark avoids)."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        sizes = {
            name: int(
                conn.execute(
                    sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:table)"),
                    {"table": table},
                ).scalar_one()
            )
            for name, table in (
                ("identities", "environments_identity"),
                ("traits", "environments_trait"),
            )
        }
    engine.dispose()
    return sizes


if __name__ == "__main__":
    main()
