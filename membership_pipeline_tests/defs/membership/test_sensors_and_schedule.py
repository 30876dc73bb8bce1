"""Partition discovery, change detection, the refresh schedule and retries (all through the
dispatcher), and the reconciler — evaluated against real Dagster instances and the real store."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import dagster as dg

from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import MembershipStoreResource
from membership_pipeline.defs.membership.schedules import membership_refresh_schedule
from membership_pipeline.defs.membership.sensors import (
    backfill_reconcile_sensor,
    environment_discovery_sensor,
)
from membership_pipeline.dispatch.run_tags import JOB_TAG, REASON_TAG
from membership_pipeline.storage import BackfillStatus, Claim
from membership_pipeline_tests.storage.conftest import write_version


def sense(sensor, instance, resources):
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return sensor(context)


def tick(instance, resources):
    with dg.build_schedule_context(
        instance=instance, resources=resources, scheduled_execution_time=datetime.now(UTC)
    ) as context:
        return membership_refresh_schedule(context)


def test_discovery_adds_and_removes_partitions_and_launches_first_backfills(
    instance, resources, store, demo_source
):
    live = sorted(e["api_key"] for e in demo_source.environments)
    result = sense(environment_discovery_sensor, instance, resources)
    [added] = result.dynamic_partitions_requests
    assert sorted(added.partition_keys) == live
    assert sorted(r.partition_key for r in result.run_requests) == live
    assert len({r.run_key for r in result.run_requests}) == len(live)
    assert all(r.run_key == r.tags[JOB_TAG] for r in result.run_requests)
    assert {r.tags[REASON_TAG] for r in result.run_requests} == {"new_environment"}

    instance.add_dynamic_partitions(environments_partitions.name, [*live, "env_deleted"])
    result = sense(environment_discovery_sensor, instance, resources)
    [removed] = result.dynamic_partitions_requests
    assert isinstance(removed, dg.DeleteDynamicPartitionsRequest)
    assert removed.partition_keys == ["env_deleted"]
    assert result.run_requests == []


def test_the_schedule_refreshes_only_environments_the_guard_allows(
    instance, resources, store, demo_source
):
    keys = sorted(e["api_key"] for e in demo_source.environments)
    instance.add_dynamic_partitions(environments_partitions.name, keys)
    running, cooling = keys[0], keys[1]
    assert isinstance(store.claim(running, "run-a"), Claim)
    write_version(store, store.claim(cooling, "run-b"), {})  # just finished: in cooldown
    requests = tick(instance, resources)
    assert sorted(r.partition_key for r in requests) == keys[2:]
    assert {r.tags[REASON_TAG] for r in requests} == {"schedule"}
    assert all(r.tags["dagster/max_runtime"] for r in requests)

    # The next tick: the two deferred requests are still queued and merge with the new ones.
    for key in keys[2:]:
        instance.delete_dynamic_partition(environments_partitions.name, key)
    skipped = tick(instance, resources)
    assert isinstance(skipped, dg.SkipReason)
    assert "2 coalesced, 1 deferred-cooldown, 1 deferred-running" in skipped.skip_message
    assert f"{running}: deferred-running (a backfill is running, claimed by run-a)" in (
        skipped.skip_message
    )
    assert f"{cooling}: deferred-cooldown (in cooldown for another" in skipped.skip_message


def test_the_reconciler_fails_claims_of_dead_runs(
    instance, resources, store, store_url, demo_source
):
    keys = [e["api_key"] for e in demo_source.environments]

    @dg.op
    def noop() -> None:
        pass

    finished = (
        dg.GraphDefinition(name="finished", node_defs=[noop])
        .to_job()
        .execute_in_process(instance=instance)
    )
    assert isinstance(store.claim(keys[0], finished.run_id), Claim)  # its run ended: dead
    short = MembershipStoreResource(url=store_url, lease_seconds=2)
    assert isinstance(short.get().claim(keys[1], "pid:999999"), Claim)  # unknown owner
    result = sense(backfill_reconcile_sensor, instance, resources)
    assert f"{keys[0]} (owner_gone, run {finished.run_id})" in result.skip_message
    assert store.metadata(keys[1]).last_backfill_status is BackfillStatus.RUNNING

    time.sleep(2.1)  # the unknown owner's lease lapses
    result = sense(backfill_reconcile_sensor, instance, resources)
    assert f"{keys[1]} (lease_expired, run pid:999999)" in result.skip_message
    assert store.metadata(keys[1]).last_backfill_status is BackfillStatus.FAILED
    again = sense(backfill_reconcile_sensor, instance, resources)
    assert again.skip_message == "no stale claims"
    short.get().close()
