"""Trait writes published through real Dagster: the capture sensor drains the slot, records the
changed identities and requests a delta backfill (the in-process edit job); the run publishes a
delta version equal to a full backfill. With capture streaming, change detection no longer turns
new identity rows into full backfills."""

from __future__ import annotations

import gc
import os
import random
import signal
import time
from pathlib import Path

import dagster as dg
from dagster._daemon.types import DaemonHeartbeat

from membership_pipeline.changes.capture import hold_consumer, release_consumer
from membership_pipeline.database.schema import migrate
from membership_pipeline.defs.membership import assets as assets_module
from membership_pipeline.defs.membership import resources as resources_module
from membership_pipeline.defs.membership.awaiting_daemon import SENSOR_DAEMON, waiting_for_daemon
from membership_pipeline.defs.membership.capture_sensor import capture_sensor
from membership_pipeline.defs.membership.definitions import build_resources
from membership_pipeline.defs.membership.jobs import EDIT_JOB
from membership_pipeline.defs.membership.resources import (
    ChangeCaptureResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.sensors import backfill_dispatch_sensor
from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.run_tags import MODE_TAG
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore
from membership_pipeline_tests.backfill.identity_edits import apply_identity_edit
from membership_pipeline_tests.backfill.segment_edits import apply_edit
from membership_pipeline_tests.captured_source import CapturedSource
from membership_pipeline_tests.defs.membership.test_incremental_backfill import (
    materialize,
    metadata_of,
)
from membership_pipeline_tests.membership_answers import assert_same_answers


def assert_published_like_a_full_backfill(instance, source, store_url, env_key, tmp_path):
    """Nothing is left pending, and every read answer equals a full backfill of the source."""
    with MembershipStore(store_url) as store:
        assert not store.pending_identities(env_key).ids
        full_url = f"sqlite:///{tmp_path / 'full.sqlite'}"
        migrate(full_url)
        assert materialize(instance, build_resources(source.url, full_url), env_key).success
        with MembershipStore(full_url) as full:
            assert_same_answers(store, full, env_key)


def _counted(cls, made, name):
    """``cls``, counting in ``made[name]`` the objects made."""

    class Counted(cls):
        def __init__(self, *args, **kwargs):
            made[name] += 1
            super().__init__(*args, **kwargs)

    return Counted


def tick(sensor, instance, resources):
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return sensor(context)


def test_trait_writes_are_published_by_a_delta_run(
    instance, store_url, captured_source: CapturedSource, tmp_path: Path
):
    source = captured_source
    environment = source.dataset.environments[0]
    env_key = environment["api_key"]
    resources = build_resources(source.url, store_url) | {
        "membership_store": MembershipStoreResource(
            url=store_url, cooldown_seconds=0, change_cooldown_seconds=0
        ),
        "change_capture": ChangeCaptureResource(
            slot=source.settings.slot, publication=source.settings.publication
        ),
    }
    sensor = capture_sensor(interval=2)
    assert materialize(instance, resources, env_key).success  # the first, full
    first = tick(sensor, instance, resources)  # what changed before the slot is unknown:
    assert isinstance(first, dg.SensorResult)  # a full refresh of every environment
    assert sorted((r.partition_key, r.tags[MODE_TAG]) for r in first.run_requests) == sorted(
        (e["api_key"], "full") for e in source.dataset.environments
    )
    rng = random.Random(4)
    changed = set()
    for kind in ("update_value", "insert_trait", "delete_trait", "create_identity"):
        changed |= apply_identity_edit(source.url, kind, environment["id"], rng)

    # Change detection sees the new identity row, but capture is streaming: no full backfill.
    detected = tick(backfill_dispatch_sensor, instance, resources)
    assert not detected.run_requests, detected.skip_reason

    result = tick(sensor, instance, resources)
    assert isinstance(result, dg.SensorResult), result
    [request] = result.run_requests
    assert request.partition_key == env_key and request.job_name == EDIT_JOB
    assert request.tags[MODE_TAG] == "delta"
    ran = materialize(
        instance, resources, env_key, **request.run_config["ops"]["segment_membership_bitmaps"][
            "config"]
    )  # fmt: skip
    assert ran.success
    metadata = metadata_of(ran)
    assert metadata["mode"] == "delta", metadata["mode_reason"]
    assert metadata["identities_reevaluated"] == len(changed)
    assert metadata["bitmaps_rewritten"] >= 1  # the universe at least (a new identity)
    assert metadata["chunks_patched"] + metadata["chunks_rewritten"] >= 1
    # the previous answers came by identity (the full version wrote them): payloads are read
    # only under chunks rewritten whole (a patch outgrowing a quarter of a tiny payload)
    assert metadata["answer_rows_read"] >= 1
    assert metadata["payload_bytes_read"] == 0 or metadata["chunks_rewritten"] >= 1
    assert metadata["bytes"] < metadata["bytes_shared"]
    assert_published_like_a_full_backfill(instance, source, store_url, env_key, tmp_path)
    idle = tick(sensor, instance, resources)  # nothing new: a quiet tick says so
    assert isinstance(idle, dg.SkipReason) and idle.skip_message == "no changes"

    # A segment edit rides the stream: capture requests it, change detection does not (its
    # second request, launched beside capture's deltas, would meet pending identities and
    # run as a full backfill).
    assert apply_edit(source.url, "edit", environment["project_id"], rng) is not None
    detected = tick(backfill_dispatch_sensor, instance, resources)
    assert not detected.run_requests, detected.skip_reason
    result = tick(sensor, instance, resources)
    assert isinstance(result, dg.SensorResult), result
    [request] = [r for r in result.run_requests if r.partition_key == env_key]
    assert (request.job_name, request.tags[MODE_TAG]) == (EDIT_JOB, "incremental")
    config = request.run_config["ops"]["segment_membership_bitmaps"]["config"]
    ran = materialize(instance, resources, env_key, **config)
    assert ran.success and metadata_of(ran)["mode"] == "incremental"
    assert_published_like_a_full_backfill(instance, source, store_url, env_key, tmp_path)

    # Trait writes and a segment edit in one tick: one delta run publishes both, one version.
    changed = set()
    for kind in ("update_value", "insert_trait", "create_identity"):
        changed |= apply_identity_edit(source.url, kind, environment["id"], rng)
    edited = apply_edit(source.url, "edit", environment["project_id"], rng)
    created = apply_edit(source.url, "create", environment["project_id"], rng)
    result = tick(sensor, instance, resources)
    assert isinstance(result, dg.SensorResult), result
    [request] = [r for r in result.run_requests if r.partition_key == env_key]
    assert (request.job_name, request.tags[MODE_TAG]) == (EDIT_JOB, "delta")
    config = request.run_config["ops"]["segment_membership_bitmaps"]["config"]
    with MembershipStore(store_url) as store:
        before = store.metadata(env_key).published_version_id
    ran = materialize(instance, resources, env_key, **config)
    assert ran.success
    metadata = metadata_of(ran)
    assert metadata["mode"] == "delta", metadata["mode_reason"]
    assert metadata["identities_reevaluated"] == len(changed)
    assert sorted(metadata["segments_rebuilt"]) == sorted([str(edited), str(created)])
    assert metadata["base_version"] == before
    with MembershipStore(store_url) as store:
        assert store.metadata(env_key).published_version_id == metadata["version"]
    assert_published_like_a_full_backfill(instance, source, store_url, env_key, tmp_path)


def test_the_capture_process_runs_deltas_itself_and_the_sensor_stands_aside(
    instance, store_url, captured_source: CapturedSource, tmp_path: Path, monkeypatch
):
    """``membership-capture``'s loop: while another process holds the slot it waits and says
    whose; then it holds the slot (the sensor skips), leaves the first tick's full refresh to
    the daemon (saying none runs), records the writes and runs the delta in-process as a
    Dagster run in the instance; once it stops, the sensor takes over."""
    from membership_pipeline.defs.membership.capture_process import LEASE, run_capture
    from membership_pipeline.defs.membership.definitions import membership_definitions
    from membership_pipeline.defs.membership.deployment import Deployment

    source = captured_source
    environment = source.dataset.environments[1]
    env_key = environment["api_key"]
    settings = {
        "MEMBERSHIP_SOURCE_URL": source.url,
        "MEMBERSHIP_STORE_URL": store_url,
        "MEMBERSHIP_CAPTURE_SLOT": source.settings.slot,
        "MEMBERSHIP_CAPTURE_PUBLICATION": source.settings.publication,
        "MEMBERSHIP_CHANGE_COOLDOWN_SECONDS": "0",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    definitions = membership_definitions(Deployment(settings))
    resources = build_resources(source.url, store_url) | {
        "membership_store": MembershipStoreResource(
            url=store_url, cooldown_seconds=0, change_cooldown_seconds=0
        ),
    }
    # Another process holds the slot: the process waits and says whose it is.
    said: list[str] = []
    with MembershipStore(store_url) as store:
        now = store.clock()
        hold_consumer(store.database, source.settings.slot, "elsewhere:7", now=now, lease=LEASE)
    run_capture(definitions, instance, ticks=1, say=said.append)
    assert said == [
        f"slot {source.settings.slot} is held by the capture process elsewhere:7 (its lease "
        f"runs until {(now + LEASE).strftime('%H:%M:%S')} UTC and is renewed while it runs): "
        "waiting. If that process has stopped, this one takes over when the lease lapses; stop "
        "it to hand over now."
    ]
    with MembershipStore(store_url) as store:
        release_consumer(store.database, source.settings.slot, "elsewhere:7")
        assert not DatabaseQueue(store.database).pending()  # it read nothing meanwhile
    said.clear()
    run_capture(definitions, instance, ticks=1, say=said.append)  # a full refresh, left queued
    with MembershipStore(store_url) as store:
        queued = DatabaseQueue(store.database).pending()
        assert {r.mode for r in queued} == {"full"}
        # No daemon runs on this instance: the process says so, naming what to start.
        [waiting] = said
        assert waiting.startswith(
            f"{len(queued)} full backfill(s) wait for the Dagster daemon, and none runs on this "
            "instance: start `dagster-daemon run` (or `dg dev`) with DAGSTER_HOME="
        )
        assert f"{env_key} full (change, queued " in waiting
        instance.add_daemon_heartbeat(
            DaemonHeartbeat(time.time(), SENSOR_DAEMON, "test-daemon", errors=[])
        )
        assert waiting_for_daemon(store, instance, store.clock()) is None  # one runs now
    launched = tick(backfill_dispatch_sensor, instance, resources)  # the daemon's dispatcher
    [full] = [r for r in launched.run_requests if r.partition_key == env_key]
    assert full.tags[MODE_TAG] == "full"
    assert materialize(instance, resources, env_key).success  # (the run it launches)
    changed = set()
    rng = random.Random(8)
    for kind in ("update_value", "delete_identity", "create_identity"):
        changed |= apply_identity_edit(source.url, kind, environment["id"], rng)
    seen = []
    sensor_skips = []
    # The process's store and source serve its runs: a delta run (two steps opening the
    # source, three using the store) connects nothing of its own.
    made = {"sources": 0, "stores": 0}
    monkeypatch.setattr(
        resources_module, "FlagsmithSource", _counted(FlagsmithSource, made, "sources")
    )
    monkeypatch.setattr(
        resources_module, "MembershipStore", _counted(MembershipStore, made, "stores")
    )
    made_by_runs = []

    def report(drained, runs):
        made_by_runs.append(dict(made))
        seen.append((drained, runs))
        resources = build_resources(source.url, store_url) | {
            "change_capture": ChangeCaptureResource(
                slot=source.settings.slot, publication=source.settings.publication
            )
        }
        sensor_skips.append(tick(capture_sensor(2), instance, resources))

    gc.unfreeze()
    try:
        run_capture(definitions, instance, interval=0.1, ticks=2, report=report)
        # after its first run, what stays for the process's life is out of the collector's way
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    [(drained, [run])] = [s for s in seen if s[1]]
    assert len(drained.tick.pending) == len(changed) and run.success
    assert made_by_runs[0] == {"sources": 1, "stores": 1}
    assert run.dagster_run.tags[MODE_TAG] == "delta"
    assert instance.get_run_by_id(run.run_id) is not None  # recorded in the instance
    skip = sensor_skips[0]
    assert isinstance(skip, dg.SkipReason) and "capture runs in the process" in skip.skip_message
    assert_published_like_a_full_backfill(instance, source, store_url, env_key, tmp_path)
    # Stopped: the lease is released and the sensor is the consumer again.
    resources = build_resources(source.url, store_url) | {
        "change_capture": ChangeCaptureResource(
            slot=source.settings.slot, publication=source.settings.publication
        )
    }
    after = tick(capture_sensor(2), instance, resources)
    assert "capture runs in the process" not in str(getattr(after, "skip_message", ""))
    # SIGINT while a run is in progress: the run completes and publishes, and the process stops
    # after that tick (Dagster's own SIGINT handler, installed around a run on the main
    # thread, would fail the run and keep the process going); its handlers are put back.
    changed = apply_identity_edit(source.url, "update_value", environment["id"], random.Random(9))
    real = assets_module.compute_delta

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(assets_module, "compute_delta", interrupted)
    ran = []
    handler = signal.getsignal(signal.SIGINT)
    run_capture(definitions, instance, interval=0.1, ticks=30, report=lambda _, r: ran.append(r))
    [[run]] = [runs for runs in ran if runs]
    assert run.success and len(ran) < 30 and changed
    assert ran[-1] == [run]  # no tick after the one the signal came in
    assert signal.getsignal(signal.SIGINT) is handler
    assert_published_like_a_full_backfill(instance, source, store_url, env_key, tmp_path)
