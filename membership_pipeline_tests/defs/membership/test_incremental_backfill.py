"""Segment edits published by incremental backfills through real Dagster runs (``materialize``,
the change-detection sensor), on SQLite and PostgreSQL stores: one version, one flip, only the
edited segment re-evaluated, every answer the full backfill's."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from membership_pipeline.database.schema import migrate
from membership_pipeline.defs.membership.assets import segment_membership_bitmaps
from membership_pipeline.defs.membership.definitions import build_resources
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import MembershipStoreResource
from membership_pipeline.defs.membership.sensors import backfill_dispatch_sensor
from membership_pipeline.demo.dataset import DemoDataset, write_demo_dataset
from membership_pipeline.dispatch.run_tags import MODE_TAG, SEGMENTS_TAG
from membership_pipeline.storage import MembershipStore
from membership_pipeline_tests.backfill.segment_edits import apply_edit
from membership_pipeline_tests.membership_answers import assert_same_answers


@pytest.fixture
def editable_source(tmp_path: Path) -> DemoDataset:
    """A Flagsmith database of its own (the test edits its segments)."""
    return write_demo_dataset(
        f"sqlite:///{tmp_path / 'flagsmith.sqlite'}",
        identities=400,
        organisations=1,
        projects_per_organisation=1,
        environments_per_project=1,
        segments_per_project=12,
        seed=5,
    )


def materialize(instance, resources, env_key: str, **config):
    instance.add_dynamic_partitions(environments_partitions.name, [env_key])
    return dg.materialize(
        [segment_membership_bitmaps],
        partition_key=env_key,
        instance=instance,
        resources=resources,
        run_config={"ops": {"segment_membership_bitmaps": {"config": {"force": True, **config}}}},
        raise_on_error=False,
    )


def metadata_of(result) -> dict[str, object]:
    [materialization] = result.asset_materializations_for_node("segment_membership_bitmaps")
    return {key: value.value for key, value in materialization.metadata.items()}


def full_store(tmp_path: Path, instance, source: DemoDataset, env_key: str) -> MembershipStore:
    """The same source state, backfilled in full into a store of its own."""
    url = f"sqlite:///{tmp_path / 'full.sqlite'}"
    migrate(url)
    assert materialize(instance, build_resources(source.url, url), env_key).success
    return MembershipStore(url)


def test_an_edited_segment_is_published_incrementally(
    instance, store, store_url, editable_source, tmp_path
):
    env_key = editable_source.environments[0]["api_key"]
    project = editable_source.environments[0]["project_id"]
    resources = build_resources(editable_source.url, store_url)
    first = materialize(instance, resources, env_key, mode="incremental")
    assert first.success
    assert metadata_of(first)["mode"] == "full"  # nothing to build on yet
    before = store.reader().published(env_key)
    before_bitmaps = {k: before.bitmap(k) for k in before.segment_counts()}

    edited = str(apply_edit(editable_source.url, "edit", project, random.Random(7)))
    result = materialize(instance, resources, env_key, mode="incremental")
    assert result.success
    metadata = metadata_of(result)
    published = store.reader().published(env_key)
    assert metadata["mode"] == "incremental", metadata["mode_reason"]
    assert metadata["base_version"] == before.version_id
    assert metadata["segments_reevaluated"] == [edited]
    assert metadata["segments_reused"] == len(published.segment_keys) - 1
    assert metadata["bytes_shared"] > 0 and metadata["bytes"] < metadata["bytes_shared"]
    rows = {r.data["segment"]: r.data for r in metadata["segment_counts"].records}
    assert rows[edited]["reevaluated"] and not any(
        r["reevaluated"] for key, r in rows.items() if key != edited
    )
    assert published.evaluated_as_of(edited) == published.as_of
    assert all(
        published.evaluated_as_of(k) == before.as_of for k in published.segment_keys if k != edited
    )
    # A reader holding the previous version reads it whole, from the store (not its cache).
    before._chunks.clear()
    assert {k: before.bitmap(k) for k in before.segment_counts()} == before_bitmaps
    with full_store(tmp_path, instance, editable_source, env_key) as full:
        assert_same_answers(store, full, env_key)

    # What a dashboard user sees at the command line: each segment's freshness.
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "membership_pipeline.cli",
            "--store-url",
            store_url,
            "--json",
            "segments",
            env_key,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    segments = {s["key"]: s for s in json.loads(shown.stdout)["segments"]}
    assert segments[edited]["evaluated_as_of"] == published.as_of.isoformat()
    assert {s["evaluated_as_of"] for k, s in segments.items() if k != edited} == {
        before.as_of.isoformat()
    }


def test_a_bad_mode_is_refused_at_launch_before_claiming(
    instance, store, store_url, editable_source
):
    """``mode`` is a typed choice: Dagster refuses another value before any run or claim, and
    says which values it takes."""
    env_key = editable_source.environments[0]["api_key"]
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        materialize(
            instance, build_resources(editable_source.url, store_url), env_key, mode="partial"
        )
    assert (
        "config:mode not in enum type Literal['full', 'incremental', 'delta'] got partial"
        in str(refused.value)
    )
    assert store.metadata(env_key) is None  # never claimed
    assert instance.get_runs() == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_change_detection_requests_and_runs_an_incremental_backfill(
    instance, store, store_url, editable_source, tmp_path
):
    env_key = editable_source.environments[0]["api_key"]
    project = editable_source.environments[0]["project_id"]
    resources = build_resources(editable_source.url, store_url)
    resources["membership_store"] = MembershipStoreResource(
        url=store_url, cooldown_seconds=0, change_cooldown_seconds=0
    )
    assert materialize(instance, resources, env_key).success

    def tick() -> list[dg.RunRequest]:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            return list(backfill_dispatch_sensor(context).run_requests)

    assert tick() == []  # the first tick sets the watermarks
    edited = str(apply_edit(editable_source.url, "edit", project, random.Random(11)))
    [request] = tick()
    assert request.tags[MODE_TAG] == "incremental"
    assert request.tags[SEGMENTS_TAG] == edited
    config = request.run_config["ops"]["segment_membership_bitmaps"]["config"]
    assert config["mode"] == "incremental"
    result = materialize(instance, resources, env_key, **config)
    assert result.success
    metadata = metadata_of(result)
    assert (metadata["mode"], metadata["segments_reevaluated"]) == ("incremental", [edited])
    with full_store(tmp_path, instance, editable_source, env_key) as full:
        assert_same_answers(store, full, env_key)
