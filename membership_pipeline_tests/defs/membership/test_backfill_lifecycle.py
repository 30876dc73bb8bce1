"""The backfill lifecycle through real Dagster runs (``materialize``), on SQLite and PostgreSQL
(both the store and the Dagster instance storage)."""

from __future__ import annotations

import threading
import time
from typing import Any

import dagster as dg
import sqlalchemy as sa
import structlog
from pyroaring import BitMap

from membership_pipeline.backfill import staging
from membership_pipeline.defs.membership.assets import (
    AUDIT_CHECK,
    BITMAPS,
    segment_membership_bitmaps,
    segment_membership_counts,
)
from membership_pipeline.defs.membership.backfill_events import GUARD_TAG
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import FlagsmithSourceResource
from membership_pipeline.dispatch.run_tags import ENVIRONMENT_NAME_TAG
from membership_pipeline.evaluation import engine
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import BackfillStatus, Claim, MembershipStore

GATE = threading.Event()


class GatedSource(FlagsmithSourceResource):
    """The real source, whose read waits until the test opens the gate: a run caught mid-way."""

    def open(self) -> FlagsmithSource:
        source = super().open()
        plan = source.plan_identities

        def gated_plan(api_key: str, every: int, **kwargs: Any) -> Any:
            assert GATE.wait(60), "the test never opened the gate"
            return plan(api_key, every, **kwargs)

        source.plan_identities = gated_plan  # type: ignore[method-assign]
        return source


def run(instance, resources, env_key: str, *, force: bool = False, selection=None):
    instance.add_dynamic_partitions(environments_partitions.name, [env_key])
    return dg.materialize(
        selection or [segment_membership_bitmaps],
        partition_key=env_key,
        instance=instance,
        resources=resources,
        run_config={"ops": {"segment_membership_bitmaps": {"config": {"force": force}}}},
        raise_on_error=False,
    )


def run_in_background(instance, resources, env_key: str, **kwargs):
    GATE.clear()
    outcome: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("result", run(instance, resources, env_key, **kwargs))
    )
    thread.start()
    return thread, outcome


def names_in_flagsmith(source_url: str, env_key: str) -> str:
    """ "organisation / project / environment", straight from Flagsmith's tables."""
    query = sa.text(
        "SELECT o.name, p.name, e.name FROM environments_environment e"
        " JOIN projects_project p ON p.id = e.project_id"
        " JOIN organisations_organisation o ON o.id = p.organisation_id WHERE e.api_key = :key"
    )
    engine = sa.create_engine(source_url)
    with engine.connect() as conn:
        organisation, project, environment = conn.execute(query, {"key": env_key}).one()
    engine.dispose()
    return f"{organisation} / {project} / {environment}"


def wait_for_status(store: MembershipStore, env_key: str, status: BackfillStatus) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = store.metadata(env_key)
        if found is not None and found.last_backfill_status is status:
            return
        time.sleep(0.05)
    raise AssertionError(f"{env_key} never became {status}")


def test_first_backfill_is_running_then_succeeded_with_metadata(
    instance, resources, store, env_key
):
    gated = {**resources, "flagsmith": GatedSource(url=resources["flagsmith"].url)}
    thread, outcome = run_in_background(instance, gated, env_key)
    wait_for_status(store, env_key, BackfillStatus.RUNNING)
    running = store.metadata(env_key)
    assert running.published_version_id is None
    assert instance.get_run_by_id(running.claim_owner) is not None  # the claim is the run's
    GATE.set()
    thread.join(60)
    result = outcome["result"]
    assert result.success
    done = store.metadata(env_key)
    assert done.last_backfill_status is BackfillStatus.SUCCEEDED
    assert done.claim_owner == result.run_id
    assert done.last_backfill_completed_at > done.last_backfill_started_at

    [materialization] = result.asset_materializations_for_node("segment_membership_bitmaps")
    metadata = materialization.metadata
    name = names_in_flagsmith(resources["flagsmith"].url, env_key)
    assert metadata["environment"].value == done.display_name == name
    assert instance.get_run_by_id(result.run_id).tags[ENVIRONMENT_NAME_TAG] == name
    assert metadata["version"].value == done.published_version_id
    assert metadata["identities"].value == done.published_identity_count > 0
    assert metadata["bytes"].value > 0
    table = metadata["segment_counts"].value.records
    published = store.reader().published(env_key)
    assert {r.data["segment"]: r.data["members"] for r in table} == published.segment_counts()
    assert {"seconds_read", "seconds_evaluate", "seconds_audit", "seconds_flip"} <= set(metadata)
    [check] = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == (AUDIT_CHECK, True)
    assert check.metadata["mismatches"].value == 0


def test_a_full_version_vacuums_the_answers_by_identity_after_its_flip(
    instance, resources, store, env_key
):
    """Its rows are the live answers deltas probe: on PostgreSQL every page is all-visible at
    once (index-only probes), whatever autovacuum does; SQLite has nothing to vacuum."""
    result = run(instance, resources, env_key)
    assert result.success
    [materialization] = result.asset_materializations_for_node("segment_membership_bitmaps")
    if store.database.dialect != "postgresql":
        assert "seconds_vacuum_answers" not in materialization.metadata
        return
    assert materialization.metadata["seconds_vacuum_answers"].value > 0
    with store.database.reader.connect() as conn:
        visible, pages = conn.execute(
            sa.text(
                "SELECT relallvisible, relpages FROM pg_class "
                "WHERE oid = 'membership_identity_answers'::regclass"
            )
        ).one()
    assert pages > 0 and visible == pages


def test_a_refresh_keeps_the_published_version_until_it_flips(instance, resources, store, env_key):
    assert run(instance, resources, env_key).success
    first = store.metadata(env_key)
    counts = store.reader().published(env_key).segment_counts()
    gated = {**resources, "flagsmith": GatedSource(url=resources["flagsmith"].url)}
    thread, outcome = run_in_background(instance, gated, env_key, force=True)
    wait_for_status(store, env_key, BackfillStatus.RUNNING)
    reader = store.reader()
    assert reader.published(env_key).version_id == first.published_version_id
    assert reader.published(env_key).segment_counts() == counts
    GATE.set()
    thread.join(60)
    assert outcome["result"].success
    assert store.metadata(env_key).published_version_id > first.published_version_id
    assert reader.published(env_key).segment_counts() == counts  # same data, new version


def test_a_failed_backfill_keeps_the_published_version(instance, resources, store, env_key):
    assert run(instance, resources, env_key).success
    before = store.metadata(env_key)
    # Under a file, so no machine can have it (once seen: /nonexistent existed on a CI machine).
    broken = {**resources, "flagsmith": FlagsmithSourceResource(url="sqlite:////dev/null/x.db")}
    with structlog.testing.capture_logs() as events:
        result = run(instance, broken, env_key, force=True)
    assert not result.success
    after = store.metadata(env_key)
    assert after.last_backfill_status is BackfillStatus.FAILED
    assert after.published_version_id == before.published_version_id
    unreachable = "DatabaseUnreachable: cannot reach the Flagsmith database at sqlite:////dev/null"
    assert unreachable in after.last_error
    [failed] = [e for e in events if e["event"] == "segment_membership.backfill.failed"]
    assert failed["environment"] == env_key and failed["run_id"] == result.run_id
    assert unreachable in failed["error"]
    assert store.reader().count(env_key, next(iter(store.reader().published(env_key).segment_keys)))


def test_an_audit_disagreement_fails_without_publishing(
    instance, resources, store, env_key, monkeypatch
):
    evaluate = engine.evaluate_environment

    def buggy_engine(*args: Any, **kwargs: Any) -> Any:
        result = evaluate(*args, **kwargs)
        for members in result.segments.values():
            members.clear()  # an engine bug: every segment empty
        return result

    monkeypatch.setattr(engine, "evaluate_environment", buggy_engine)
    result = run(instance, resources, env_key)
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["mismatches"].value > 0
    metadata = store.metadata(env_key)
    assert metadata.last_backfill_status is BackfillStatus.FAILED
    assert metadata.published_version_id is None
    assert "disagree with flag-engine" in metadata.last_error


def test_a_run_that_loses_the_claim_is_skipped_and_changes_nothing(
    instance, resources, store, env_key
):
    held = store.claim(env_key, "another-run")
    assert isinstance(held, Claim)
    before = store.metadata(env_key)
    for force in (False, True):  # force skips the cooldown, never the running guard
        with structlog.testing.capture_logs() as events:
            result = run(instance, resources, env_key, force=force)
        assert result.success
        assert instance.get_run_by_id(result.run_id).tags[GUARD_TAG] == "skipped: running"
        assert result.asset_materializations_for_node("segment_membership_bitmaps") == []
        assert store.metadata(env_key) == before
        assert [e["event"] for e in events if "backfill" in e["event"]] == [
            "segment_membership.backfill.skipped"
        ]
    shadow = store.stage(held, as_of=store.clock())
    shadow.add_universe(BitMap([1]))
    store.publish(held, shadow)

    result = run(instance, resources, env_key)  # within the cooldown of that backfill
    assert instance.get_run_by_id(result.run_id).tags[GUARD_TAG] == "skipped: cooldown"
    assert store.metadata(env_key).claim_owner == "another-run"
    forced = run(instance, resources, env_key, force=True)
    assert instance.get_run_by_id(forced.run_id).tags[GUARD_TAG] == "claimed"
    assert store.metadata(env_key).claim_owner == forced.run_id


def test_the_io_manager_loads_the_published_version_downstream(instance, resources, store, env_key):
    result = run(
        instance,
        resources,
        env_key,
        selection=[segment_membership_bitmaps, segment_membership_counts],
    )
    assert result.success
    [counts] = result.asset_materializations_for_node("segment_membership_counts")
    published = store.reader().published(env_key)
    assert counts.metadata["version"].value == published.version_id
    assert counts.metadata["counts"].value == published.segment_counts()
    materialized = {e.materialization.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {BITMAPS, dg.AssetKey("segment_membership_counts")}


def test_a_failure_in_the_io_manager_publishes_nothing(
    instance, resources, store, env_key, monkeypatch
):
    assert run(instance, resources, env_key).success
    before = store.metadata(env_key)

    def store_breaks(shadow: Any, result: Any, **_: Any) -> None:
        shadow.add_universe(result.universe)  # part of the shadow is written, then it breaks
        raise OSError("disk full")

    monkeypatch.setattr(staging, "stage_membership_result", store_breaks)
    with structlog.testing.capture_logs() as events:
        result = run(instance, resources, env_key, force=True)
    assert not result.success
    after = store.metadata(env_key)
    assert after.last_backfill_status is BackfillStatus.FAILED
    # Retried twice (each attempt replaces the last one's chunks), then the shard fails for good
    # and the error names it.
    shard = "segment_membership_bitmaps.backfill_shard[shard_0]"
    assert after.last_error == f"step {shard}: OSError: disk full"
    retries = [e for e in instance.all_logs(result.run_id) if e.dagster_event
               and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"]  # fmt: skip
    assert len(retries) == 2
    assert after.published_version_id == before.published_version_id
    assert store.collect_garbage().abandoned_versions == []  # the failure discarded its shadow
    [failed] = [e for e in events if e["event"] == "segment_membership.backfill.failed"]
    assert (failed["run_id"], failed["step"], failed["error"]) == (
        result.run_id,
        shard,
        "OSError: disk full",
    )


def test_an_unreachable_source_fails_the_run_in_one_line(instance, store, store_url, env_key):
    """The source's database is gone: the plan step fails with one line naming the URL
    (password masked) and the reason, and the environment is marked failed, not running."""
    from membership_pipeline.defs.membership.definitions import build_resources

    unreachable = "postgresql+psycopg2://flagsmith:s3cret@127.0.0.1:1/flagsmith"
    result = run(instance, build_resources(unreachable, store_url), env_key, force=True)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    cause = failure.step_failure_data.error.cause  # what the UI shows under Dagster's wrapper
    [message] = cause.message.strip().splitlines()
    assert message.startswith("membership_pipeline.model.errors.DatabaseUnreachable: ")
    assert "cannot reach the Flagsmith database at " in message
    assert "flagsmith:***@127.0.0.1:1/flagsmith" in message and "s3cret" not in message
    failed = store.metadata(env_key)
    assert failed.last_backfill_status is BackfillStatus.FAILED
    assert "cannot reach the Flagsmith database" in failed.last_error
