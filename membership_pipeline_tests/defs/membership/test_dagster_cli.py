"""``dagster asset materialize`` from a fresh process with the project's workspace, on the
embedded default and on PostgreSQL; and a CLI run killed mid-backfill, reconciled by its lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import dagster as dg

from membership_pipeline.defs.membership.backfill_events import GUARD_TAG
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.sensors import backfill_reconcile_sensor
from membership_pipeline.storage import BackfillStatus
from membership_pipeline_tests.defs.membership.conftest import ROOT


def materialize_command(env_key: str, *config: str) -> list[str]:
    return [
        sys.executable, "-m", "dagster", "asset", "materialize",
        "-m", "membership_pipeline.definitions",
        "--select", "segment_membership_bitmaps", "--partition", env_key, *config,
    ]  # fmt: skip


def process_environment(dagster_home, demo_source, store_url, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **dagster_home,
        "MEMBERSHIP_SOURCE_URL": demo_source.url,
        "MEMBERSHIP_STORE_URL": store_url,
        **extra,
    }


def add_partition(dagster_home, env_key: str) -> dg.DagsterInstance:
    os.environ.update(dagster_home)  # DagsterInstance.get() and DAGSTER_PG_URL
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(environments_partitions.name, [env_key])
    return instance


def test_dagster_asset_materialize_backfills_then_guards(
    dagster_home, demo_source, store_url, store, env_key, monkeypatch
):
    for name in dagster_home:
        monkeypatch.delenv(name, raising=False)
    instance = add_partition(dagster_home, env_key)
    environment = process_environment(dagster_home, demo_source, store_url)
    first = subprocess.run(
        materialize_command(env_key), cwd=ROOT, env=environment, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    done = store.metadata(env_key)
    assert done.last_backfill_status is BackfillStatus.SUCCEEDED
    run = instance.get_run_by_id(done.claim_owner)
    assert run.status is dg.DagsterRunStatus.SUCCESS
    assert run.tags["dagster/partition"] == env_key
    assert "segment_membership.backfill.published" in first.stderr  # in the run's logs

    second = subprocess.run(
        materialize_command(env_key), cwd=ROOT, env=environment, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert store.metadata(env_key) == done
    [latest] = instance.get_runs(limit=1)
    assert latest.tags[GUARD_TAG] == "skipped: cooldown"
    instance.dispose()


def test_a_killed_cli_run_is_reconciled_when_its_lease_lapses(
    dagster_home, demo_source, store_url, store, monkeypatch, resources
):
    for name in dagster_home:
        monkeypatch.delenv(name, raising=False)
    env_key = demo_source.environments[0]["api_key"]  # the largest environment
    instance = add_partition(dagster_home, env_key)
    environment = process_environment(
        dagster_home, demo_source, store_url,
        MEMBERSHIP_LEASE_SECONDS="3", MEMBERSHIP_COOLDOWN_SECONDS="0",
    )  # fmt: skip
    slow_audit = json.dumps(
        {"ops": {"segment_membership_bitmaps": {"config": {"audit_sample_size": 100_000}}}}
    )
    process = subprocess.Popen(
        materialize_command(env_key, "--config-json", slow_audit),
        cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the step runs in a child process
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = store.metadata(env_key)
        if found is not None and found.last_backfill_status is BackfillStatus.RUNNING:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the whole run, as an OOM kill of its host would
    process.wait(30)
    stuck = store.metadata(env_key)
    assert stuck.last_backfill_status is BackfillStatus.RUNNING
    run = instance.get_run_by_id(stuck.claim_owner)
    assert run.status is dg.DagsterRunStatus.STARTED  # Dagster never learns it died

    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        assert backfill_reconcile_sensor(context).skip_message == "no stale claims"
    time.sleep(3.5)  # no heartbeat: the lease lapses
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        message = backfill_reconcile_sensor(context).skip_message
    assert f"{env_key} (lease_expired, run {run.run_id})" in message
    assert store.metadata(env_key).last_backfill_status is BackfillStatus.FAILED
    instance.dispose()
