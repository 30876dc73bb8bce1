"""``dagster asset materialize`` (through ``membership-run``) from a fresh process with the
project's workspace, on the embedded default and on PostgreSQL; ``dg launch``; and a CLI run
killed mid-backfill, reconciled by its lease."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest

from membership_pipeline.database.schema import migrate
from membership_pipeline.defs.membership.backfill_events import GUARD_TAG
from membership_pipeline.defs.membership.orphaned_runs import VERDICT_TAG
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import MembershipStoreResource
from membership_pipeline.defs.membership.sensors import backfill_reconcile_sensor
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import BackfillStatus, MembershipStore
from membership_pipeline_tests.backfill.conftest import plain_backfill
from membership_pipeline_tests.defs.membership.conftest import ROOT
from membership_pipeline_tests.membership_answers import assert_same_answers

# The documented way to run a backfill from the command line: the step server starts with it.
MEMBERSHIP_RUN = os.path.join(os.path.dirname(sys.executable), "membership-run")
SHARD_STARTED = re.compile(r'"pid": (\d+).*"event": "segment_membership.backfill.shard_started"')


def materialize_command(env_key: str, *config: str) -> list[str]:
    return [
        MEMBERSHIP_RUN, "dagster", "asset", "materialize",
        "-m", "membership_pipeline.definitions",
        "--select", "segment_membership_bitmaps", "--partition", env_key, *config,
    ]  # fmt: skip


def materialize(environment: dict[str, str], env_key: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        materialize_command(env_key), cwd=ROOT, env=environment, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


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
    first = materialize(environment, env_key)
    assert first.returncode == 0, first.stderr[-3000:]
    done = store.metadata(env_key)
    assert done.last_backfill_status is BackfillStatus.SUCCEEDED
    run = instance.get_run_by_id(done.claim_owner)
    assert run.status is dg.DagsterRunStatus.SUCCESS
    assert run.tags["dagster/partition"] == env_key
    assert "segment_membership.backfill.published" in first.stderr  # in the run's logs

    second = materialize(environment, env_key)
    assert second.returncode == 0, second.stderr[-3000:]
    assert store.metadata(env_key) == done
    [latest] = instance.get_runs(limit=1)
    assert latest.tags[GUARD_TAG] == "skipped: cooldown"
    instance.dispose()


def quick_reconciler(resources: dict[str, object], store_url: str) -> dict[str, object]:
    """The reconcile sensor's resources, ending a dead run once its log is 2 s quiet."""
    quick = MembershipStoreResource(url=store_url, orphaned_run_grace_seconds=2)
    return {**resources, "membership_store": quick}


def reconcile(instance: dg.DagsterInstance, resources: dict[str, object]) -> str:
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return backfill_reconcile_sensor(context).skip_message


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    [failure] = [e for e in instance.all_logs(run_id) if e.dagster_event_type == "PIPELINE_FAILURE"]
    return failure.dagster_event.message


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_dg_launch_materializes_a_partition(
    dagster_home, demo_source, store_url, store, env_key, monkeypatch
):
    """`dg launch` (pyproject's [tool.dg]): the same asset, partition and guard as the older
    `dagster asset materialize`, and not a deprecation warning from our code."""
    for name in dagster_home:
        monkeypatch.delenv(name, raising=False)
    instance = add_partition(dagster_home, env_key)
    dg_command = os.path.join(os.path.dirname(sys.executable), "dg")
    launched = subprocess.run(
        [dg_command, "launch", "--assets", "segment_membership_bitmaps", "--partition", env_key],
        cwd=ROOT, env=process_environment(dagster_home, demo_source, store_url),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    done = store.metadata(env_key)
    assert done.last_backfill_status is BackfillStatus.SUCCEEDED
    assert instance.get_run_by_id(done.claim_owner).status is dg.DagsterRunStatus.SUCCESS
    assert "DeprecationWarning" not in launched.stderr
    assert "superseded" not in launched.stderr  # (`dagster asset materialize` says it is)
    instance.dispose()


def test_a_killed_cli_run_is_reconciled_when_its_lease_lapses_and_its_run_ended(
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
    assert run.tags[GUARD_TAG] in ("claiming", "claimed")  # tagged before its claim

    reconciler = quick_reconciler(resources, store_url)
    assert reconcile(instance, reconciler) == "no stale claims"  # its lease still holds
    time.sleep(3.5)  # no heartbeat: the lease lapses (and the run's log has been quiet 2 s)
    message = reconcile(instance, reconciler)
    assert f"{env_key} (lease_expired, run {run.run_id})" in message
    assert f"ended: run {run.run_id} of {env_key} (failed)" in message
    assert store.metadata(env_key).last_backfill_status is BackfillStatus.FAILED
    ended = instance.get_run_by_id(run.run_id)
    assert ended.status is dg.DagsterRunStatus.FAILURE
    assert ended.tags[VERDICT_TAG] == "failed"
    assert "its backfill failed: the lease of" in failure_message(instance, run.run_id)
    assert reconcile(instance, reconciler) == "no stale claims"  # ended once
    instance.dispose()


def publish_step_started(
    instance: dg.DagsterInstance, store: MembershipStore, env_key: str
) -> str | None:
    """The run id, once the backfill's publish step has started in its own process."""
    found = store.metadata(env_key)
    if found is None or found.claim_owner is None:
        return None
    starts = instance.get_records_for_run(
        found.claim_owner, of_type=dg.DagsterEventType.STEP_START
    ).records
    publishing = any("publish_version" in r.event_log_entry.step_key for r in starts)
    return found.claim_owner if publishing else None


def test_a_run_whose_top_process_was_killed_is_ended_once_its_step_has_published(
    dagster_home, demo_source, store_url, store, monkeypatch, resources
):
    for name in dagster_home:
        monkeypatch.delenv(name, raising=False)
    env_key = demo_source.environments[0]["api_key"]
    instance = add_partition(dagster_home, env_key)
    environment = process_environment(dagster_home, demo_source, store_url)
    process = subprocess.Popen(
        materialize_command(env_key), cwd=ROOT, env=environment,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (publishing := publish_step_started(instance, store, env_key)):
        assert time.monotonic() < deadline, "the publish step never started"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # the orchestrating process only; its step goes on
    process.wait(30)
    while store.metadata(env_key).last_backfill_status is BackfillStatus.RUNNING:
        assert time.monotonic() < deadline + 120, "the orphaned step never finished"
        time.sleep(0.1)
    done = store.metadata(env_key)
    assert done.last_backfill_status is BackfillStatus.SUCCEEDED
    run = instance.get_run_by_id(done.claim_owner)
    assert run.run_id == publishing
    assert run.status is dg.DagsterRunStatus.STARTED

    reconciler = quick_reconciler(resources, store_url)
    while (message := reconcile(instance, reconciler)) == "no stale claims":
        assert time.monotonic() < deadline + 180, "the run was never ended"
        time.sleep(0.5)  # until the step process has exited and the log is quiet for 2 s
    assert message == f"ended: run {run.run_id} of {env_key} (published)"
    ended = instance.get_run_by_id(run.run_id)
    assert ended.status is dg.DagsterRunStatus.FAILURE
    assert ended.tags[VERDICT_TAG] == "published"
    said = failure_message(instance, run.run_id)
    assert f"it published version {done.published_version_id}" in said
    assert store.reader().published(env_key).version_id == done.published_version_id
    instance.dispose()


def start_and_kill_a_shard_step(environment: dict[str, str], env_key: str) -> subprocess.Popen:
    """A backfill whose first shard step is SIGKILLed (as the OOM killer would) once it starts."""
    slow_audit = json.dumps(
        {"ops": {"segment_membership_bitmaps": {"config": {"audit_sample_size": 100_000}}}}
    )
    process = subprocess.Popen(
        materialize_command(env_key, "--config-json", slow_audit),
        cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert process.stderr is not None
    for line in process.stderr:  # the run's log: each shard step says which process it is
        found = SHARD_STARTED.search(line)
        if found:
            os.kill(int(found.group(1)), signal.SIGKILL)
            return process
    raise AssertionError("no shard step started")


def two_shard_environment(dagster_home, demo_source, store_url, **extra: str) -> dict[str, str]:
    return process_environment(
        dagster_home, demo_source, store_url,
        MEMBERSHIP_SHARD_IDENTITIES="750", MEMBERSHIP_COOLDOWN_SECONDS="0", **extra,
    )  # fmt: skip


# Production's backend only: the kill paths do not depend on it, and each costs ~25 s.
@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_killed_shard_step_is_retried_and_the_version_is_exact(
    dagster_home, demo_source, store_url, store, monkeypatch, tmp_path
):
    for name in dagster_home:
        monkeypatch.delenv(name, raising=False)
    env_key = demo_source.environments[0]["api_key"]  # 1,500 identities: two shards of 750
    instance = add_partition(dagster_home, env_key)
    environment = two_shard_environment(dagster_home, demo_source, store_url)
    process = start_and_kill_a_shard_step(environment, env_key)
    process.stderr.read()
    assert process.wait(300) == 0
    done = store.metadata(env_key)
    assert done.last_backfill_status is BackfillStatus.SUCCEEDED
    retried = [
        e.step_key
        for e in instance.all_logs(done.claim_owner)
        if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"
    ]
    assert len(retried) == 1 and "backfill_shard" in retried[0]
    lifecycle = [
        e.dagster_event.event_type_value
        for e in instance.all_logs(done.claim_owner)
        if e.dagster_event and e.step_key == retried[0]
    ]
    assert {"STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_SUCCESS"} <= set(lifecycle)
    plain_url = f"sqlite:///{tmp_path / 'plain.sqlite'}"
    migrate(plain_url)
    source = FlagsmithSource(demo_source.url)
    with MembershipStore(plain_url) as plain:
        plain_backfill(source, plain, env_key)
        assert_same_answers(store, plain, env_key)  # the killed attempt left nothing behind
    source.close()
    instance.dispose()


# Production's backend only: the kill paths do not depend on it, and each costs ~25 s.
@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_killed_shard_step_without_retries_fails_after_reconcile_and_the_prior_version_stays(
    dagster_home, demo_source, store_url, store, monkeypatch, resources
):
    for name in dagster_home:
        monkeypatch.delenv(name, raising=False)
    env_key = demo_source.environments[0]["api_key"]
    instance = add_partition(dagster_home, env_key)
    environment = two_shard_environment(
        dagster_home, demo_source, store_url, MEMBERSHIP_SHARD_RETRIES="0"
    )
    first = materialize(environment, env_key)
    assert first.returncode == 0, first.stderr[-3000:]
    before = store.metadata(env_key)
    counts = store.reader().published(env_key).segment_counts()

    process = start_and_kill_a_shard_step(environment, env_key)
    assert store.reader().published(env_key).version_id == before.published_version_id
    process.stderr.read()
    assert process.wait(300) != 0
    stuck = store.metadata(env_key)
    assert stuck.last_backfill_status is BackfillStatus.RUNNING  # the killed step failed nothing
    run = instance.get_run_by_id(stuck.claim_owner)
    assert run.status is dg.DagsterRunStatus.FAILURE

    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        message = backfill_reconcile_sensor(context).skip_message
    assert f"{env_key} (owner_gone, run {run.run_id})" in message
    after = store.metadata(env_key)
    assert after.last_backfill_status is BackfillStatus.FAILED
    assert after.published_version_id == before.published_version_id
    assert store.reader().published(env_key).segment_counts() == counts
    assert store.collect_garbage().abandoned_versions  # the killed backfill's shadow, collected
    instance.dispose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_edit_job_publishes_a_segment_edit_in_the_run_process(
    dagster_home, store_url, store, tmp_path, monkeypatch
):
    """``segment_membership_edit`` from the command line, as the dispatcher launches it for a
    one-shard incremental backfill: every step in the run's own process, one flip, only the
    edited segment re-evaluated."""
    import random

    from membership_pipeline.demo.dataset import write_demo_dataset
    from membership_pipeline_tests.backfill.segment_edits import apply_edit

    source = write_demo_dataset(
        f"sqlite:///{tmp_path / 'flagsmith.sqlite'}", identities=300, organisations=1,
        projects_per_organisation=1, environments_per_project=1, segments_per_project=10,
    )  # fmt: skip
    env_key, project = source.environments[0]["api_key"], source.environments[0]["project_id"]
    for name in dagster_home:
        monkeypatch.delenv(name, raising=False)
    instance = add_partition(dagster_home, env_key)
    environment = process_environment(dagster_home, source, store_url)
    assert materialize(environment, env_key).returncode == 0
    edited = str(apply_edit(source.url, "edit", project, random.Random(3)))

    config = tmp_path / "run_config.json"  # JSON is YAML
    config.write_text(
        json.dumps({"ops": {"segment_membership_bitmaps": {"config": {"force": True,
                                                                      "mode": "incremental"}}}})
    )  # fmt: skip
    run = subprocess.Popen(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "membership_pipeline.definitions",
         "-j", "segment_membership_edit", "--config", str(config),
         "--tags", json.dumps({"dagster/partition": env_key})],
        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    [shard_pid] = {int(pid) for pid in SHARD_STARTED.findall(stderr)}
    assert shard_pid == run.pid  # no step process was launched
    done = store.metadata(env_key)
    published = store.reader().published(env_key)
    assert published.evaluated_as_of(edited) == published.as_of
    assert sum(published.evaluated_as_of(k) == published.as_of for k in published.segment_keys) == 1
    [latest] = instance.get_runs(limit=1)
    assert (latest.job_name, latest.status) == (
        "segment_membership_edit",
        dg.DagsterRunStatus.SUCCESS,
    )
    assert latest.run_id == done.claim_owner
