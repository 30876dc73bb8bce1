"""Benchmark: one segment edited, published by an incremental backfill, against the full
backfill of the same environment in the same run (PostgreSQL source and store).

    membership-benchmark-incremental [--identities 1000000] [--segments 300] [--repeats 3]
        [--source-url URL] [--executor multiprocess|in_process]

The source is seeded into a scratch database, or is an existing Flagsmith database
(``--source-url``, its first environment; the benchmark edits one condition of one segment
per edit and restores every value it changed at the end). The store is a scratch PostgreSQL
database. In order: a full backfill (``dagster asset materialize``, the definitions'
executor), then per repeat two edits, each published by an incremental backfill: one through
``dagster asset materialize`` (the definitions' executor: a process per step), one through
``dagster job execute -j segment_membership_edit`` (what the dispatcher launches for an
incremental backfill of one shard: every step in the run's process); then a full backfill
again. Each backfill is a fresh process.

Printed per backfill: the plan step's start → the flip (from Dagster's event log), the process
start → the flip, the bytes the version wrote and shares, and the store's chunk table size.
Targets: incremental publish ≤ 2 s from the start of the step; store growth per incremental
version ≈ the edited segment's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from membership_pipeline.benchmarks.dagster_runs import dagster_command
from membership_pipeline.benchmarks.scratch_database import (
    ScratchDatabase,
    analyze,
    progress,
    seed_one_environment,
)
from membership_pipeline.database.schema import migrate
from membership_pipeline.defs.membership.jobs import EDIT_JOB
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore
from membership_pipeline.storage.tables import bitmap, version

TARGET_SECONDS = 2.0


@dataclass
class Backfill:
    mode: str
    how: str  # the command that ran it
    step_to_flip: float
    process_to_flip: float
    version_id: int
    bytes_written: int
    reevaluated: int
    reused: int
    chunk_table_bytes: int
    steps: dict[str, tuple[float, float]]  # step → (start, end) seconds after the plan started
    shard_seconds: list[dict[str, float]]  # per shard: read, evaluate, audit, write


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source-url", help="an existing Flagsmith database (PostgreSQL)")
    parser.add_argument(
        "--executor", default="multiprocess", choices=["multiprocess", "in_process"]
    )
    args = parser.parse_args(argv)
    with ScratchDatabase("postgresql") as store_url, ScratchDatabase("postgresql") as scratch:
        source_url = args.source_url
        if source_url is None:
            progress(f"seeding {args.identities:,} identities × {args.segments} segments")
            seed_one_environment(scratch, args.identities, args.segments, 0)
            analyze(scratch)
            source_url = scratch
        migrate(store_url)
        run(args, source_url, store_url)


def run(args: argparse.Namespace, source_url: str, store_url: str) -> None:
    with FlagsmithSource(source_url) as source:
        info = source.environments()[0]
    engine = sa.create_engine(source_url)
    edited: list[tuple[int, str | None]] = []  # (condition id, its value before)
    backfills: list[Backfill] = []
    with tempfile.TemporaryDirectory(prefix="membership-incremental-") as home:
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        launcher = Launcher(home, source_url, store_url, info.api_key, args.executor)
        try:
            backfills.append(launcher.backfill("full"))
            for _ in range(args.repeats):
                for job in (None, EDIT_JOB):
                    edited.append(_edit_one_condition(engine, info.project_id, len(edited)))
                    backfills.append(launcher.backfill("incremental", job))
            backfills.append(launcher.backfill("full"))
        finally:
            _restore(engine, edited)
            engine.dispose()
    _report(args, info.api_key, backfills, store_url)


class Launcher:
    def __init__(
        self, home: str, source_url: str, store_url: str, env_key: str, executor: str
    ) -> None:
        self.home, self.store_url, self.env_key = home, store_url, env_key
        self.environment = {
            **os.environ,
            "DAGSTER_HOME": home,
            "MEMBERSHIP_SOURCE_URL": source_url,
            "MEMBERSHIP_STORE_URL": store_url,
            "MEMBERSHIP_EXECUTOR": executor,
        }
        subprocess.run(
            [sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get()"
             f".add_dynamic_partitions('environments', [{env_key!r}])"],
            env=self.environment, check=True,
        )  # fmt: skip

    def backfill(self, mode: str, job: str | None = None) -> Backfill:
        config = {"ops": {"segment_membership_bitmaps": {"config": {"force": True, "mode": mode}}}}
        how = f"job execute -j {job}" if job else "asset materialize"
        progress(f"{mode} backfill through dagster {how}")
        if job is None:
            command = ["asset", "materialize", "--select", "segment_membership_bitmaps",
                       "--partition", self.env_key,
                       "--config-json", json.dumps(config)]  # fmt: skip
        else:
            config_file = Path(self.home, "run_config.json")  # JSON is YAML
            config_file.write_text(json.dumps(config))
            command = ["job", "execute", "-j", job, "--config", str(config_file),
                       "--tags", json.dumps({"dagster/partition": self.env_key})]  # fmt: skip
        started = time.time()
        in_process = job == EDIT_JOB or self.environment["MEMBERSHIP_EXECUTOR"] == "in_process"
        done = subprocess.run(
            dagster_command(*command[:2], "-m", "membership_pipeline.definitions", *command[2:],
                            in_process=in_process),
            env=self.environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"the {mode} backfill failed:\n{done.stderr[-4000:]}")
        with MembershipStore(self.store_url) as store:
            metadata = store.metadata(self.env_key)
            assert metadata is not None and metadata.published_at is not None
            version_id = metadata.published_version_id
            shard_seconds = [r.report.get("seconds", {}) for r in store.shard_reports(version_id)]
            with store.database.reader.connect() as conn:
                row = conn.execute(
                    sa.select(version).where(version.c.version_id == version_id)
                ).one()
                chunk_table = conn.execute(
                    sa.text("SELECT pg_total_relation_size('membership_bitmap_chunk')")
                ).scalar_one()
        steps = self._steps()
        plan_start = steps["plan_shards"][0]
        return Backfill(
            mode=row.mode,
            how=how,
            step_to_flip=metadata.published_at.timestamp() - plan_start,
            process_to_flip=metadata.published_at.timestamp() - started,
            version_id=version_id,
            bytes_written=row.byte_size,
            reevaluated=row.reevaluated_segment_count,
            reused=row.reused_segment_count,
            chunk_table_bytes=chunk_table,
            steps={k: (a - plan_start, b - plan_start) for k, (a, b) in steps.items()},
            shard_seconds=shard_seconds,
        )

    def _steps(self) -> dict[str, tuple[float, float]]:
        """Each step's start and success times (epoch seconds), from Dagster's event log."""
        kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
        found: dict[str, list[float]] = {}
        with dg.DagsterInstance.from_config(self.home) as instance:
            [latest] = instance.get_run_records(limit=1)
            for record in instance.get_records_for_run(latest.dagster_run.run_id).records:
                entry = record.event_log_entry
                if entry.dagster_event is not None and entry.dagster_event_type in kinds:
                    name = (entry.step_key or "").removeprefix("segment_membership_bitmaps.")
                    found.setdefault(name, []).append(entry.timestamp)
        return {name: (min(times), max(times)) for name, times in found.items()}


def _edit_one_condition(engine: sa.Engine, project_id: int, nth: int) -> tuple[int, str | None]:
    """Give one EQUAL condition (a different one each time) the value another EQUAL condition
    on the same property uses: the edited segment keeps members, as a real edit would."""
    with engine.begin() as conn:
        rows = conn.execute(
            sa.text(
                """
                SELECT c.id, c.property, c.value FROM segments_condition c
                JOIN segments_segmentrule r ON r.id = c.rule_id
                JOIN segments_segment s ON s.id = r.segment_id
                WHERE s.project_id = :project AND s.deleted_at IS NULL AND c.deleted_at IS NULL
                  AND c.operator = 'EQUAL'
                ORDER BY c.id
                """
            ),
            {"project": project_id},
        ).all()
        values: dict[str, set[str]] = {}
        for row in rows:
            values.setdefault(row.property, set()).add(row.value)
        editable = [r for r in rows if len(values[r.property]) > 1]
        if not editable:
            raise SystemExit("the environment's segments have no EQUAL condition to edit")
        condition = editable[(nth * 37) % len(editable)]
        new_value = min(values[condition.property] - {condition.value})
        conn.execute(
            sa.text(
                "UPDATE segments_condition SET value = :value, updated_at = now() WHERE id = :id"
            ),
            {"value": new_value, "id": condition.id},
        )
    return condition.id, condition.value


def _restore(engine: sa.Engine, edited: list[tuple[int, str | None]]) -> None:
    with engine.begin() as conn:
        for condition_id, value in reversed(edited):
            conn.execute(
                sa.text("UPDATE segments_condition SET value = :value WHERE id = :id"),
                {"value": value, "id": condition_id},
            )


def _report(args: argparse.Namespace, env_key: str, runs: list[Backfill], store_url: str) -> None:
    full = [r for r in runs if r.mode == "full"]
    incremental = [r for r in runs if r.mode == "incremental"]
    with MembershipStore(store_url) as store, store.database.reader.connect() as conn:
        edited_bytes = [
            conn.execute(
                sa.select(sa.func.sum(bitmap.c.byte_size)).where(
                    bitmap.c.version_id == r.version_id, bitmap.c.chunk_version_id.is_(None),
                    bitmap.c.kind == "segment",
                )
            ).scalar_one() or 0
            for r in incremental
        ]  # fmt: skip
    print(f"incremental benchmark: {env_key}, {args.identities:,} identities, {args.executor}")
    for r in runs:
        print(
            f"  {r.mode:<11} ({r.how}) version {r.version_id}: "
            f"plan step start → flip {r.step_to_flip:.2f} s, "
            f"process start → flip {r.process_to_flip:.2f} s, re-evaluated {r.reevaluated}, "
            f"shared {r.reused}, wrote {r.bytes_written:,} bytes, chunk table "
            f"{r.chunk_table_bytes / 2**20:,.1f} MB"
        )
        for index, seconds in enumerate(r.shard_seconds):
            print(
                f"      shard {index}: "
                + ", ".join(f"{phase} {value:.2f} s" for phase, value in seconds.items())
            )
        print(
            "      steps (s after the plan step started): "
            + ", ".join(
                f"{k} {a:.2f}–{b:.2f}" for k, (a, b) in sorted(r.steps.items(), key=lambda i: i[1])
            )
        )
    if not incremental or len(full) < 1:
        return
    full_step = statistics.median(r.step_to_flip for r in full)
    full_process = statistics.median(r.process_to_flip for r in full)
    for how in sorted({r.how for r in incremental}):
        these = [r for r in incremental if r.how == how]
        step = statistics.median(r.step_to_flip for r in these)
        process = statistics.median(r.process_to_flip for r in these)
        print(
            f"  incremental through {how}: median {step:.2f} s from the plan step's start to "
            f"the flip (full: {full_step:.2f} s, {full_step / step:.1f}×)   target ≤ "
            f"{TARGET_SECONDS:.0f} s: {'ok' if step <= TARGET_SECONDS else 'MISSED'}; process "
            f"start → flip {process:.2f} s (full: {full_process:.2f} s, "
            f"{full_process / process:.1f}×)"
        )
    growth = [r.bytes_written for r in incremental]
    print(
        f"  bytes written per incremental version: {', '.join(f'{b:,}' for b in growth)}; the "
        f"edited segments' own bytes: {', '.join(f'{b:,}' for b in edited_bytes)}; a full "
        f"version writes {full[0].bytes_written:,}"
    )


if __name__ == "__main__":
    main()
