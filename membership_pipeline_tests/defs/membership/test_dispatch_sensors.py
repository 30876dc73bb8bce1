"""Change detection and retries through the dispatcher, over several sensor ticks."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest
import sqlalchemy as sa
import structlog
from pyroaring import BitMap

from membership_pipeline.changes.watermarks import save_watermarks
from membership_pipeline.defs.membership.assets import segment_membership_bitmaps
from membership_pipeline.defs.membership.orphaned_runs import VERDICT_TAG
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import (
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.run_requests import enqueue_and_dispatch
from membership_pipeline.defs.membership.sensors import (
    backfill_dispatch_sensor,
    backfill_retry_sensor,
)
from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.requests import BackfillRequest, Reason
from membership_pipeline.dispatch.run_tags import ENVIRONMENT_NAME_TAG, JOB_TAG, REASON_TAG
from membership_pipeline.model.changes import TableMark, Watermarks
from membership_pipeline.sources.change_feed import ChangeFeed
from membership_pipeline.storage import Claim

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
def no_cooldown(resources, store_url):
    store = MembershipStoreResource(url=store_url, cooldown_seconds=0, change_cooldown_seconds=0)
    return {**resources, "membership_store": store}


def sense(instance, resources):
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return backfill_dispatch_sensor(context)


def publish_stale(store, env_key, source_url):
    """A published version read long ago, and change detection rewound to before any identity
    or trait was written: the next tick finds every row new, and requests this environment."""
    held = store.claim(env_key, "old-run", force=True)
    assert isinstance(held, Claim)
    shadow = store.stage(held, as_of=LONG_AGO)
    shadow.add_universe(BitMap([1]))
    store.publish(held, shadow)
    engine = sa.create_engine(source_url)
    current = ChangeFeed(engine).current()
    engine.dispose()
    rewound = Watermarks(
        tables={table: TableMark(0, 0) for table in current.tables}, segments=current.segments
    )
    with store.database.writer.begin() as conn:
        save_watermarks(conn, rewound, None, store.clock())


def test_changed_environments_are_dispatched_once(instance, no_cooldown, store, demo_source):
    resources = no_cooldown
    stale = demo_source.environments[2]["api_key"]
    publish_stale(store, stale, demo_source.url)
    first = sense(instance, resources)
    # The others were never backfilled: discovery, not change detection, requests those.
    assert len(first.run_requests) == 1, first.skip_reason
    [request] = first.run_requests
    assert request.partition_key == stale
    assert request.tags[REASON_TAG] == "change"
    assert request.run_key == request.tags[JOB_TAG]
    assert request.tags["membership/window_start"] == LONG_AGO.isoformat()
    assert request.tags["membership/attempt"] == "1"

    with structlog.testing.capture_logs() as events:
        # The overlapping scan sees the same rows: the same window, its dedup key is locked.
        second = sense(instance, resources)
    assert second.run_requests == []
    assert "1 dedup-suppressed" in second.skip_reason.skip_message
    [event] = [e for e in events if e["event"].startswith("segment_membership.dispatch.")]
    assert event["event"] == "segment_membership.dispatch.dedup_suppressed"
    assert event["environment"] == stale
    assert DatabaseQueue(store.database).pending() == []  # decided, nothing left behind


def test_a_failed_dispatched_run_is_retried_until_its_attempts_run_out(
    instance, no_cooldown, store, demo_source
):
    resources = no_cooldown
    env_key = demo_source.environments[3]["api_key"]
    publish_stale(store, env_key, demo_source.url)
    [request] = sense(instance, resources).run_requests
    broken = {**resources, "flagsmith": FlagsmithSourceResource(url="sqlite:////dev/null/x.db")}
    instance.add_dynamic_partitions(environments_partitions.name, [env_key])
    for attempt in (1, 2, 3):
        failed = dg.materialize(
            [segment_membership_bitmaps], partition_key=env_key, instance=instance,
            resources=broken, tags=dict(request.tags), raise_on_error=False,
            run_config=request.run_config,
        )  # fmt: skip
        assert not failed.success
        with dg.build_run_status_sensor_context(
            sensor_name="backfill_retry_sensor",
            dagster_event=failed.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(failed.run_id),
            resources=resources,
        ) as context:
            backfill_retry_sensor(context.for_run_failure())
        result = sense(instance, resources)  # the dispatch sensor's next tick
        if attempt == 3:
            assert result.run_requests == []
            assert "1 dropped-max-attempts" in result.skip_reason.skip_message
            break
        [request] = result.run_requests
        assert request.tags[REASON_TAG] == "retry"
        assert request.tags["membership/attempt"] == str(attempt + 1)
        assert request.tags["membership/window_start"] == LONG_AGO.isoformat()
    assert DatabaseQueue(store.database).pending() == []


def test_a_dispatched_run_ended_after_it_published_is_not_retried(
    instance, no_cooldown, store, demo_source
):
    resources = no_cooldown
    env_key = demo_source.environments[3]["api_key"]
    publish_stale(store, env_key, demo_source.url)
    [request] = sense(instance, resources).run_requests
    instance.add_dynamic_partitions(environments_partitions.name, [env_key])
    published = dg.materialize(
        [segment_membership_bitmaps], partition_key=env_key, instance=instance,
        resources=resources, tags=dict(request.tags), run_config=request.run_config,
    )  # fmt: skip
    # What the reconciler does to a run whose orchestrator died after its step published.
    instance.add_run_tags(published.run_id, {VERDICT_TAG: "published"})
    run = instance.get_run_by_id(published.run_id)
    failure = instance.report_run_failed(run, "the run's process is gone")
    with (
        structlog.testing.capture_logs() as events,
        dg.build_run_status_sensor_context(
            sensor_name="backfill_retry_sensor",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(published.run_id),
            resources=resources,
        ) as context,
    ):
        backfill_retry_sensor(context.for_run_failure())
    assert [e["event"] for e in events] == ["segment_membership.dispatch.retry_not_needed"]
    assert DatabaseQueue(store.database).pending() == []


def test_a_dispatched_run_backfills_in_shards(instance, no_cooldown, store, demo_source):
    """The sensor path runs the sharded graph like every other launch path: the run request's
    config and tags, one step per shard, one published version."""
    env_key = demo_source.environments[2]["api_key"]
    publish_stale(store, env_key, demo_source.url)
    [request] = sense(instance, no_cooldown).run_requests
    assert ENVIRONMENT_NAME_TAG not in request.tags  # no backfill has planned it: no name yet
    instance.add_dynamic_partitions(environments_partitions.name, [env_key])
    config = request.run_config["ops"]["segment_membership_bitmaps"]["config"]
    result = dg.materialize(
        [segment_membership_bitmaps], partition_key=env_key, instance=instance,
        resources=no_cooldown, tags=dict(request.tags),
        run_config={"ops": {"segment_membership_bitmaps": {"config": {
            **config, "shard_identities": 100}}}},
    )  # fmt: skip
    assert result.success
    done = store.metadata(env_key)
    assert done.claim_owner == result.run_id
    shards = store.shard_reports(done.published_version_id)
    assert len(shards) == -(-done.published_identity_count // 100) > 1
    shard_steps = {
        e.step_key for e in result.all_events if e.step_key and "backfill_shard[" in e.step_key
    }
    assert len(shard_steps) == len(shards)
    [materialization] = result.asset_materializations_for_node("segment_membership_bitmaps")
    assert materialization.metadata["shards"].value == len(shards)
    assert len(materialization.metadata["shard_table"].value.records) == len(shards)

    # The next dispatched run names the environment from the start, as its plan recorded it.
    now = store.clock()
    by_hand = BackfillRequest.new(
        organisation=request.tags["membership/organisation"], environment=env_key,
        window_start=now, window_end=now, reason=Reason.MANUAL, created_at=now,
    )  # fmt: skip
    [again], _ = enqueue_and_dispatch(
        no_cooldown["membership_store"], no_cooldown["dispatch_policy"], [by_hand]
    )
    assert again.tags[ENVIRONMENT_NAME_TAG] == done.display_name
    assert done.display_name.endswith(f" / {demo_source.environments[2]['name']}")
