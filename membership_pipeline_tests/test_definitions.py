"""The Dagster entry point loads, in-process and through the CLI with the project's workspace;
importing it builds, reads and starts nothing; a deployment's variables shape what it builds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from membership_pipeline.definitions import defs
from membership_pipeline.defs.membership.definitions import build_resources
from membership_pipeline.defs.membership.staging_io_manager import (
    STAGING_IO_MANAGER,
    staging_io_manager,
)

ROOT = Path(__file__).resolve().parent.parent


def test_definitions_object_loads() -> None:
    loaded = defs()  # what Dagster does when it loads the code location
    assert isinstance(loaded, dg.Definitions)
    repository = loaded.get_repository_def()
    assert {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()} == {
        "segment_membership_bitmaps",
        "segment_membership_counts",
    }
    bitmaps = repository.assets_defs_by_key[dg.AssetKey("segment_membership_bitmaps")]
    assert isinstance(bitmaps.partitions_def, dg.DynamicPartitionsDefinition)
    assert bitmaps.partitions_def.name == "environments"
    assert {s.name for s in repository.sensor_defs} == {
        "identity_capture_sensor",
        "environment_discovery_sensor",
        "backfill_dispatch_sensor",
        "backfill_retry_sensor",
        "backfill_reconcile_sensor",
    }
    assert {s.name for s in repository.schedule_defs} == {
        "membership_refresh_schedule",
        "membership_garbage_collection_schedule",
    }
    assert set(repository.get_top_level_resources()) == {
        "flagsmith",
        "membership_store",
        "membership_io_manager",
        STAGING_IO_MANAGER,  # the store-backed IO manager of the backfill's inner steps
        "dispatch_policy",
        "change_capture",
    }
    assert build_resources()[STAGING_IO_MANAGER] is staging_io_manager
    groups = {
        key.to_user_string(): assets.group_names_by_key[key]
        for key, assets in repository.assets_defs_by_key.items()
    }
    assert groups == {  # one group in the UI's catalogue
        "segment_membership_bitmaps": "membership",
        "segment_membership_counts": "membership",
    }
    job = loaded.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "multiprocess"  # shards run in parallel by default
    assert set(job.graph.node_dict["segment_membership_bitmaps"].definition.node_dict) == {
        "plan_shards",
        "backfill_shard",
        "publish_version",
    }


def test_workspace_validates_with_the_dagster_cli(tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    completed = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "membership_pipeline" in completed.stdout + completed.stderr
