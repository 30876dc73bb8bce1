"""Dagster's Celery executor on RabbitMQ: a sharded backfill whose steps run on a Celery worker
(started here as deployed, ``membership-celery-worker`` with the shipped deploy/celery.yaml, on
a vhost of this test's own) publishes the same version as a local run of the same shards; a
worker started without its settings says what it is missing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from membership_pipeline.benchmarks.celery_workers import CeleryWorkers
from membership_pipeline.database.schema import migrate
from membership_pipeline.defs.membership.assets import segment_membership_bitmaps
from membership_pipeline.defs.membership.definitions import build_resources
from membership_pipeline.defs.membership.executors import DEFAULT_BROKER
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.storage import BackfillStatus, MembershipStore
from membership_pipeline_tests.defs.membership.conftest import ROOT
from membership_pipeline_tests.membership_answers import assert_same_answers
from membership_pipeline_tests.process_groups import stop_group

SHARD_IDENTITIES = 400  # the test environment's 1,500 identities in 4 shard steps


@pytest.fixture
def celery_workers(demo_source, postgres_url) -> Iterator[CeleryWorkers]:
    """A Celery worker as deployed (the benchmarks' harness: a RabbitMQ vhost of this test's
    own, so tasks of another test's run never reach it; the Dagster instance on PostgreSQL;
    the shipped deploy/celery.yaml), stopped with every process it forked."""
    migrate(postgres_url)
    base = {
        **os.environ,
        "MEMBERSHIP_SOURCE_URL": demo_source.url,
        "MEMBERSHIP_STORE_URL": postgres_url,
        "MEMBERSHIP_SHARD_IDENTITIES": str(SHARD_IDENTITIES),
    }
    with CeleryWorkers(base, processes=2) as workers:
        yield workers


def test_celery_workers_publish_the_same_version_as_a_local_run(
    celery_workers, demo_source, tmp_path, monkeypatch
):
    celery_environment = celery_workers.environment
    env_key = demo_source.environments[0]["api_key"]
    for name in ("DAGSTER_HOME", "DAGSTER_PG_URL"):
        monkeypatch.setenv(name, celery_environment[name])
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(environments_partitions.name, [env_key])
    run = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize",
         "-m", "membership_pipeline.definitions",
         "--select", "segment_membership_bitmaps", "--partition", env_key],
        cwd=ROOT, env=celery_environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    worker_log = celery_workers.log.read_text()
    assert run.returncode == 0, run.stderr[-3000:] + worker_log[-3000:]

    celery_store = MembershipStore(celery_environment["MEMBERSHIP_STORE_URL"])
    done = celery_store.metadata(env_key)
    assert done.last_backfill_status is BackfillStatus.SUCCEEDED
    shards = celery_store.shard_reports(done.published_version_id)
    assert len(shards) == 4
    record = instance.get_run_by_id(done.claim_owner)
    on_worker = {
        event.step_key
        for event in instance.all_logs(record.run_id)
        if event.dagster_event is not None
        and "in celery worker" in (event.dagster_event.message or "")
    }
    shard_steps = {
        f"segment_membership_bitmaps.backfill_shard[shard_{i}]" for i in range(len(shards))
    }
    assert (
        shard_steps
        | {
            "segment_membership_bitmaps.plan_shards",
            "segment_membership_bitmaps.publish_version",
        }
        <= on_worker
    )

    local_url = f"sqlite:///{tmp_path / 'local.sqlite'}"
    migrate(local_url)
    with dg.instance_for_test() as local_instance:
        local_instance.add_dynamic_partitions(environments_partitions.name, [env_key])
        local = dg.materialize(
            [segment_membership_bitmaps],
            partition_key=env_key,
            instance=local_instance,
            resources=build_resources(demo_source.url, local_url),
            run_config={
                "ops": {
                    "segment_membership_bitmaps": {"config": {"shard_identities": SHARD_IDENTITIES}}
                }
            },
        )
        assert local.success
    with MembershipStore(local_url) as local_store:
        assert (
            len(local_store.shard_reports(local_store.metadata(env_key).published_version_id)) == 4
        )
        assert_same_answers(celery_store, local_store, env_key)
    celery_store.close()
    instance.dispose()


def test_a_worker_says_what_it_is_missing_and_which_broker_it_takes(dagster_postgres_url, tmp_path):
    """``membership-celery-worker`` as deploy/celery.yaml documents it: without DAGSTER_HOME,
    or without the variable its instance reads, one line naming it; without
    MEMBERSHIP_CELERY_BROKER it starts on the runs' own default broker and says so."""
    command = [str(Path(sys.executable).parent / "membership-celery-worker"),
               "--name", f"mp-test-{os.getpid()}", "--", "--concurrency", "1"]  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "MEMBERSHIP_"))}
    missing = subprocess.run(command, env=base, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "membership-celery-worker: set DAGSTER_HOME to the folder of the Dagster instance its "
        "runs are recorded in (holding the project's dagster.yaml, or "
        "deploy/dagster.postgres.yaml as dagster.yaml)"
    )
    shutil.copy(ROOT / "deploy" / "dagster.postgres.yaml", tmp_path / "dagster.yaml")
    home = {**base, "DAGSTER_HOME": str(tmp_path)}
    unset = subprocess.run(command, env=home, capture_output=True, text=True, timeout=60)
    assert unset.returncode == 1 and unset.stderr.count("\n") == 1
    assert "reads $DAGSTER_PG_URL, which is not set" in unset.stderr
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            command, env={**home, "DAGSTER_PG_URL": dagster_postgres_url}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
    finally:
        stop_group(worker, signal.SIGTERM, wait=30)  # Celery's warm shutdown
    said = log.read_text()
    assert (
        "membership-celery-worker: MEMBERSHIP_CELERY_BROKER is not set: listening on "
        f"{DEFAULT_BROKER}, the runs' default" in said
    )
    assert "transport:   amqp://guest:**@127.0.0.1:5672//" in said
