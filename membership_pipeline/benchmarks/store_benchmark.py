"""Benchmark: the membership store on SQLite and PostgreSQL.

    membership-benchmark-store [--identities N] [--segments S] [--backend sqlite|postgresql|both]

It seeds a demo Flagsmith database in PostgreSQL with one environment of N identities and S
segments, reads and evaluates it (the large version), and evaluates a 1,000-identity synthetic
environment (the small one). For each store backend it prints:
- the shadow write and the publish flip, for both sizes (target: flip(large) / flip(small) ≤ 1.5,
  i.e. the flip does not grow with the version);
- count and is_member latency on the large environment, p50 and p99: cold (a new reader: pointer,
  directory and chunk from the database), warm (cache filled, pointer checked on every call) and
  warm with a 1 s pointer TTL (pure memory). Target: warm p99 ≤ 2 ms;
- for comparison, the same segment count done as SQL ``count(*)`` over Flagsmith's identity and
  trait tables in PostgreSQL (indexed), with both counts so they can be checked against each other.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa

from membership_pipeline.backfill.staging import stage_membership_result
from membership_pipeline.benchmarks.scratch_database import (
    ScratchDatabase,
    progress,
    seed_one_environment,
)
from membership_pipeline.database.schema import migrate
from membership_pipeline.demo.synthetic import synthetic_environment
from membership_pipeline.evaluation import MembershipResult, evaluate_environment
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import Claim, MembershipReader, MembershipStore

FLIP_RATIO_TARGET = 1.5
WARM_P99_TARGET_MS = 2.0
Query = Callable[[MembershipReader, str, int], object]
STRING_TRAITS = ("plan", "country")  # the demo's traits whose values are plain strings


class Probe(NamedTuple):
    segment_key: str
    trait_key: str
    value: str


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=5, help="publishes per size")
    parser.add_argument("--reads", type=int, default=2_000, help="queries per latency figure")
    parser.add_argument("--sql-repeats", type=int, default=10, help="SQL count(*) queries")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]

    with ScratchDatabase("postgresql") as flagsmith_url:
        progress(f"seeding a Flagsmith database: {args.identities:,} identities")
        seeded = seed_one_environment(flagsmith_url, args.identities, args.segments)
        api_key = seeded.environments[0]["api_key"]
        progress("reading and evaluating it")
        large, probe = _evaluate_from_source(flagsmith_url, api_key)
        small = _evaluate_synthetic(1_000, args.segments)
        print(
            f"store benchmark: large version {len(large.universe):,} identities × "
            f"{len(large.segments)} segments; small version {len(small.universe):,} identities"
        )
        for backend in backends:
            with ScratchDatabase(backend) as store_url:
                migrate(store_url)
                with MembershipStore(store_url, cooldown=timedelta(0)) as store:
                    _publish_figures(store, backend, {"small": small, "large": large}, args.repeats)
                    _read_figures(store, backend, large, args.reads)
        _sql_count_figures(flagsmith_url, api_key, probe, large, args.sql_repeats)


def _evaluate_from_source(url: str, api_key: str) -> tuple[MembershipResult, Probe]:
    with FlagsmithSource(url) as source:
        snapshot = source.read_environment(api_key)
    result = evaluate_environment(
        snapshot.environment, snapshot.identities, snapshot.traits, snapshot.segments
    )
    return result, _probe(snapshot.segments)


def _probe(segments: list[dict[str, Any]]) -> Probe:
    """A segment that SQL can count directly: one string trait EQUAL to a value."""
    for segment in segments:
        rules = segment["rules"]
        if len(rules) == 1 and rules[0]["type"] == "ALL" and not rules[0].get("rules"):
            conditions = rules[0].get("conditions") or []
            if len(conditions) == 1 and conditions[0]["operator"] == "EQUAL":
                condition = conditions[0]
                if condition["property"] in STRING_TRAITS:
                    return Probe(segment["key"], condition["property"], condition["value"])
    raise LookupError("no segment of one string-trait EQUAL condition to count in SQL")


def _evaluate_synthetic(identities: int, segments: int) -> MembershipResult:
    env = synthetic_environment(identities, segments, seed=1, environment_key="small_env")
    return evaluate_environment(env.environment, env.identities, env.traits, env.segments)


def _publish_figures(
    store: MembershipStore, backend: str, results: dict[str, MembershipResult], repeats: int
) -> None:
    flips: dict[str, list[float]] = {}
    for label, result in results.items():
        progress(f"{backend}: {repeats} publishes of the {label} version")
        writes, flips[label], size = [], [], 0
        for _ in range(repeats):
            held = store.claim(result.environment_key, "benchmark", force=True)
            assert isinstance(held, Claim), held
            started = time.perf_counter()
            shadow = store.stage(held, as_of=store.clock())
            stage_membership_result(shadow, result)
            shadow.seal(now=store.clock())
            writes.append(time.perf_counter() - started)
            started = time.perf_counter()
            store.publish(held, shadow)
            flips[label].append(time.perf_counter() - started)
            size = shadow.byte_size
            store.collect_garbage(keep_retired=1, retired_grace=timedelta(0))
        print(
            f"  {backend:<11}{label} version ({len(result.universe):>9,} identities, "
            f"{size / 1e6:7.2f} MB): shadow write {statistics.median(writes):6.3f} s, "
            f"publish flip {statistics.median(flips[label]) * 1000:6.2f} ms (median of {repeats})"
        )
    ratio = statistics.median(flips["large"]) / statistics.median(flips["small"])
    verdict = "ok" if ratio <= FLIP_RATIO_TARGET else "MISSED"
    print(
        f"  {backend:<11}flip large / small = {ratio:.2f}   target ≤ {FLIP_RATIO_TARGET}: {verdict}"
    )


def _read_figures(
    store: MembershipStore, backend: str, result: MembershipResult, reads: int
) -> None:
    progress(f"{backend}: read latency")
    env = result.environment_key
    rng = random.Random(0)
    segments = sorted(result.segments)
    ids = result.universe.to_array()
    probes = [(rng.choice(segments), int(ids[rng.randrange(len(ids))])) for _ in range(reads)]
    cold_reads = max(reads // 20, 20)

    def _count(reader: MembershipReader, segment: str, _: int) -> object:
        return reader.count(env, segment)

    def _is_member(reader: MembershipReader, segment: str, identity: int) -> object:
        return reader.is_member(env, segment, identity)

    def cold(query: Query, segment: str, identity: int) -> float:
        reader = store.reader()
        started = time.perf_counter()
        query(reader, segment, identity)
        return time.perf_counter() - started

    rows = {
        "count cold": [cold(_count, s, i) for s, i in probes[:cold_reads]],
        "is_member cold": [cold(_is_member, s, i) for s, i in probes[:cold_reads]],
    }
    for label, ttl in (("warm", 0.0), ("warm, 1 s pointer TTL", 1.0)):
        reader = store.reader(pointer_ttl=ttl)
        for segment, identity in probes:  # fill the cache
            reader.is_member(env, segment, identity)
        rows[f"count {label}"] = _timed(reader, _count, probes)
        rows[f"is_member {label}"] = _timed(reader, _is_member, probes)
    for label, samples in rows.items():
        p50, p99 = _percentiles(samples)
        target = ""
        if "warm" in label:
            target = f"   target p99 ≤ {WARM_P99_TARGET_MS} ms: "
            target += "ok" if p99 <= WARM_P99_TARGET_MS else "MISSED"
        print(f"  {backend:<11}{label:<32} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms{target}")


def _timed(reader: MembershipReader, query: Query, probes: list[tuple[str, int]]) -> list[float]:
    samples = []
    for segment, identity in probes:
        started = time.perf_counter()
        query(reader, segment, identity)
        samples.append(time.perf_counter() - started)
    return samples


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return (
        ordered[len(ordered) // 2] * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


def _sql_count_figures(
    url: str, api_key: str, probe: Probe, result: MembershipResult, repeats: int
) -> None:
    """The probe segment (e.g. plan EQUAL 'free') counted in SQL, as a query over Flagsmith's
    tables would: a user trait of that value, unless a system trait overrides the key."""
    query = sa.text(
        """
        SELECT count(*)
        FROM environments_identity i
        JOIN environments_environment e ON e.id = i.environment_id
        JOIN environments_trait t ON t.identity_id = i.id
        WHERE e.api_key = :api_key AND t.trait_key = :trait AND t.value_type = 'unicode'
          AND t.string_value = :value AND (i.system_traits ->> :trait) IS NULL
        """
    )
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ON environments_trait (trait_key, string_value)"))
        conn.execute(sa.text("ANALYZE"))
    samples, count = [], None
    with engine.connect() as conn:
        for _ in range(repeats):
            started = time.perf_counter()
            parameters = {"api_key": api_key, "trait": probe.trait_key, "value": probe.value}
            count = conn.execute(query, parameters).scalar_one()
            samples.append(time.perf_counter() - started)
    engine.dispose()
    p50, p99 = _percentiles(samples)
    bitmap_count = len(result.segments[probe.segment_key])
    agree = "equal" if count == bitmap_count else "DIFFERENT"
    print(
        f"  {'postgresql':<11}{'SQL count(*)':<32} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms   "
        f"({probe.trait_key} = {probe.value!r}: {count:,} rows; bitmap count {bitmap_count:,}: "
        f"{agree})"
    )


if __name__ == "__main__":
    main()
