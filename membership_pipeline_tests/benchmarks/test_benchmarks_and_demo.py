"""The benchmark commands run end to end (their figures are not asserted: no timing); the demo's
are test_first_hour.py's."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys

import sqlalchemy as sa

from membership_pipeline_tests.conftest import POSTGRES_URL


def _run(*args: str, **environment: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "MEMBERSHIP_BENCH_POSTGRES_URL": POSTGRES_URL, **environment},
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_benchmark_prints_its_figures_and_agrees_with_flag_engine() -> None:
    out = _run(
        "membership_pipeline.benchmarks.engine_benchmark",
        "--identities",
        "3000",
        "--segments",
        "25",
        "--oracle-sample",
        "60",
        "--repeat",
        "1",
    )
    for label in ("environment", "evaluation", "peak RSS", "throughput", "flag-engine", "speed-up"):
        assert f"  {label}" in out
    assert "0 mismatches with flag-engine in 1,500 sampled pairs" in out


def test_source_benchmark_reads_both_backends() -> None:
    out = _run(
        "membership_pipeline.benchmarks.source_benchmark",
        "--identities",
        "2000",
        "--segments",
        "20",
        "--repeats",
        "2",
    )
    assert "  sqlite      read " in out and "  postgresql  read " in out
    assert out.count(" s (median of ") == 4
    assert "right after the bulk load" in out  # PostgreSQL only
    assert "2,000 identities + " in out and out.count("; 0 failed segments)") == 2


def test_change_benchmark_times_the_dispatch_sensor() -> None:
    out = _run(
        "membership_pipeline.benchmarks.change_benchmark",
        "--identities",
        "3000",
        "--segments",
        "20",
        "--ticks",
        "2",
    )
    assert "first tick on a new store" in out
    assert "nothing changed" in out and "1,000 new traits in 10 environments" in out
    assert "requested exactly the 10 environments: yes" in out


def test_store_benchmark_prints_its_figures() -> None:
    out = _run(
        "membership_pipeline.benchmarks.store_benchmark",
        "--identities",
        "4000",
        "--segments",
        "20",
        "--repeats",
        "2",
        "--reads",
        "100",
    )
    for backend in ("sqlite", "postgresql"):
        assert f"  {backend:<11}flip large / small = " in out
        for query in ("count", "is_member"):
            for mode in ("cold", "warm", "warm, 1 s pointer TTL"):
                assert f"  {backend:<11}{query} {mode} " in out
    assert "  postgresql SQL count(*) " in out and ": equal)" in out


def test_dispatch_benchmark_prints_its_figures() -> None:
    out = _run(
        "membership_pipeline.benchmarks.dispatch_benchmark",
        "--environments", "500", "--requests", "100", "--ticks", "2",
    )  # fmt: skip
    for backend in ("sqlite", "postgresql"):
        assert f"  {backend:<11}tick " in out
    assert "500 environments compared" in out and " published" in out


def test_materialize_benchmark_reads_the_same_traits_for_both_shapes() -> None:
    """Both data shapes through `dagster asset materialize`; the wide shape's 17 extra traits
    per identity belong to keys no segment reads, so both read exactly the same trait rows."""
    out = _run(
        "membership_pipeline.benchmarks.materialize_benchmark",
        "--identities",
        "3000",
        "--segments",
        "20",
        "--repeats",
        "1",
    )
    for shape in ("narrow", "wide"):
        assert f"materialize benchmark, {shape} shape: 3,000 identities" in out
    assert out.count("process start → flip: ") == 2
    read = [line.split(" trait rows read")[0].rsplit(", ", 1)[1] for line in out.splitlines()
            if "trait rows read" in line]  # fmt: skip
    assert len(read) == 2 and read[0] == read[1] and int(read[0].replace(",", "")) > 3000


def test_incremental_benchmark_publishes_edits_incrementally() -> None:
    """A full backfill, two edits each published incrementally (through the asset's executor
    and through the edit job), a full one again; and the restored source."""
    out = _run(
        "membership_pipeline.benchmarks.incremental_benchmark",
        "--identities",
        "3000",
        "--segments",
        "20",
        "--repeats",
        "1",
    )
    assert out.count("  full        (asset materialize)") == 2
    incremental = [line for line in out.splitlines() if line.startswith("  incremental (")]
    assert len(incremental) == 2 and all("re-evaluated 1, shared 19" in x for x in incremental)
    assert "job execute -j segment_membership_edit" in incremental[1]
    assert out.count("from the plan step's start to the flip") == 2
    [growth] = [x for x in out.splitlines() if x.startswith("  bytes written per incremental")]
    written = growth.split(": ")[1].split(";")[0]
    own = growth.split("the edited segments' own bytes: ")[1].split(";")[0]
    assert written == own  # an incremental version writes the edited segment's chunks only


def test_serving_benchmark_loads_every_request_kind_without_errors() -> None:
    """`membership serve` on a seeded environment, each request kind at two loads."""
    out = _run(
        "membership_pipeline.benchmarks.serving_benchmark",
        "--identities", "2000", "--segments", "10", "--seconds", "0.5", "--concurrency", "1,2",
    )  # fmt: skip
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("request"))
    rows = [line.split() for line in itertools.takewhile(bool, lines[header + 1 :])]
    kinds = {
        "is-member by id",
        "is-member by identifier",
        "is-member by hot identifier",
        "count",
        "members page of 200",
        "segments-of batch of 1,000 by id",
        "segments-of batch of 1,000 by identifier",
        "is-member by id, 304",  # an error unless every answer is the 304
    }
    found = {}
    for row in rows:
        name = next((k for k in kinds if " ".join(row).startswith(k + " ")), None)
        if name is not None:
            in_flight, rate, errors = row[-5], row[-4], row[-1]
            found[(name, in_flight)] = (int(rate.replace(",", "")), int(errors))
    assert set(found) == {(k, c) for k in kinds for c in ("1", "2")}
    assert all(rate > 0 and errors == 0 for rate, errors in found.values())
    assert "is-member by id at " in out and "identifier resolution at 1 in flight" in out


def test_capture_benchmark_publishes_trait_writes_and_drops_its_slot() -> None:
    out = _run(
        "membership_pipeline.benchmarks.capture_benchmark",
        "--identities", "3000", "--segments", "20", "--tick", "1", "--repeats", "1",
        "--sustain-seconds", "0", "--updates", "100",
    )  # fmt: skip
    assert "100 trait updates across 100 identities: commit → read API" in out
    assert "segment edit: commit → read API" in out
    assert "idle tick: the slot read" in out
    engine = sa.create_engine(POSTGRES_URL)
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'mp_bench%'")
        ).scalar()
    engine.dispose()
    assert left == 0


def test_shard_benchmark_grows_a_scattered_environment_and_compares_it() -> None:
    """The big-environment benchmark on a tiny scale: a scattered 1,000-identity environment
    with the covering index, compared (one and two shards), grown to 3,000 and backfilled in
    shards of 1,000 on the multiprocess executor and then on a Celery worker, with the ratios
    to the small environment and between the executors."""
    out = _run(
        "membership_pipeline.benchmarks.shard_benchmark",
        *("--base-identities", "1000", "--compare-identities", "1000"),
        *("--identities", "3000", "--shard-identities", "1000"),
        *("--segments", "20", "--repeats", "1"),
    )
    assert "compare: 1,000 identities" in out
    assert "large: 3,000 identities in shards of 1,000, traits scattered" in out
    multiprocess, celery = out.split("large: ")[1:]
    for large in (multiprocess, celery):
        assert large.startswith("3,000 identities in shards of 1,000, traits scattered")
        assert "published 3,000 identities" in large
        assert large.count("    shard ") == 3
        assert "against 1,000 identities in 2 shards" in large
        assert "a shard's read seconds per identity" in large
    assert out.count("    shard ") == 1 + 2 + 3 + 3  # the compare's last runs, the large ones
    assert "multiprocess executor" in multiprocess.splitlines()[0]
    assert "Celery executor, one worker of 2 processes" in celery.splitlines()[0]
    # plan, three shards and publish, each a task of the worker
    assert "3 shards, published 3,000 identities, 5 steps run by the worker, 0 pool" in celery
    assert re.search(r"celery / multiprocess wall: [\d.]+ / [\d.]+ s = [\d.]+", out)


def test_scattered_layout_keeps_every_row_and_scatters_the_heap(postgres_url: str) -> None:
    """The live layout: each copy holds the base's trait rows (shifted), less the few it
    deletes; the heap is no longer in identity order; vacuum left no dead row."""
    from membership_pipeline.benchmarks.live_layout import DELETED_SHARE
    from membership_pipeline.benchmarks.scratch_database import (
        SCATTERED,
        grow_environment,
        seed_one_environment,
    )

    written = seed_one_environment(postgres_url, 1_000, 10)
    key = written.environments[0]["api_key"]
    engine = sa.create_engine(postgres_url)
    columns = "trait_key, value_type, boolean_value, integer_value, string_value, float_value"
    with engine.connect() as conn:
        query = sa.text(f"SELECT identity_id, {columns} FROM environments_trait")
        before = {tuple(r) for r in conn.execute(query)}
    assert grow_environment(postgres_url, key, 3_000, 1_000, SCATTERED, base=1_000) == 3_000
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT identity_id, {columns} FROM environments_trait ORDER BY ctid")
        ).all()
        span = (
            conn.execute(
                sa.text("SELECT min(id) FROM environments_identity WHERE identifier LIKE '%~1'")
            ).scalar_one()
            - 1
        )
        dead = conn.execute(
            sa.text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = "
                    "to_regclass('environments_trait')")
        ).scalar_one()  # fmt: skip
    engine.dispose()
    shifted = [((r[0] - 1) % span + 1, *r[1:]) for r in rows]
    assert set(shifted) <= before  # nothing made up
    assert 3 * len(before) * (1 - 3 * DELETED_SHARE) < len(rows) < 3 * len(before)
    identities = [r[0] for r in rows]
    assert len(set(identities)) > 2_500
    out_of_order = sum(a > b for a, b in itertools.pairwise(identities))
    assert out_of_order > len(rows) / 5  # in the heap, identities follow no order
    assert dead == 0
