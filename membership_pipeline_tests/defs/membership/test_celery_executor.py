"""Dagster's Celery executor on RabbitMQ: a sharded backfill whose steps run on a Celery worker
(started here with the shipped deploy/celery.yaml, on a vhost of this test's own) publishes
the same version as a local run of the same shards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import dagster as dg
import pytest

from membership_pipeline.benchmarks.celery_workers import CeleryWorkers
from membership_pipeline.database.schema import migrate
from membership_pipeline.defs.membership.assets import segment_membership_bitmaps
from membership_pipeline.defs.membership.definitions import build_resources
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.storage import BackfillStatus, MembershipStore
from membership_pipeline_tests.defs.membership.conftest import ROOT
from membership_pipeline_tests.membership_answers import assert_same_answers

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
