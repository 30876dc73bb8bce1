"""The Dagster entry point (``workspace.yaml`` loads ``defs``).

Configuration comes from the environment, so the same code runs on the embedded default and in
production: ``MEMBERSHIP_SOURCE_URL`` (Flagsmith's database), ``MEMBERSHIP_STORE_URL`` (the
bitmap store), ``MEMBERSHIP_COOLDOWN_SECONDS``, ``MEMBERSHIP_LEASE_SECONDS``,
``MEMBERSHIP_ORPHANED_RUN_GRACE_SECONDS`` (how long a dead run's log stays quiet before it ends),
``MEMBERSHIP_SHARD_IDENTITIES`` (identities per shard step) and ``MEMBERSHIP_EXECUTOR`` (which
Dagster executor runs the steps).
"""

from __future__ import annotations

import os
import sys

from membership_pipeline.defs.membership.step_server import (
    start_preloading,
    start_step_server_early,
)

# First, before Dagster and the project load: the steps' server imports them on another core
# (or, for an in-process run, a thread of this process does).
start_step_server_early(sys.argv) or start_preloading(sys.argv)

import dagster as dg

from membership_pipeline.defs.membership.assets import (
    segment_membership_bitmaps,
    segment_membership_counts,
)
from membership_pipeline.defs.membership.dispatch import DispatchPolicyResource
from membership_pipeline.defs.membership.executors import executor_from_environment
from membership_pipeline.defs.membership.io_manager import publishing_io_manager
from membership_pipeline.defs.membership.jobs import bitmaps_job, edit_job
from membership_pipeline.defs.membership.partitions import environments_partitions
from membership_pipeline.defs.membership.resources import (
    FlagsmithSourceResource,
    MembershipStoreResource,
)
from membership_pipeline.defs.membership.schedules import membership_refresh_schedule
from membership_pipeline.defs.membership.sensors import (
    backfill_dispatch_sensor,
    backfill_reconcile_sensor,
    backfill_retry_sensor,
    environment_discovery_sensor,
)
from membership_pipeline.defs.membership.shadow_io_manager import shadow_staging_io_manager
from membership_pipeline.dispatch.environment_settings import policy_settings_from_environment
from membership_pipeline.sources.demo_dataset import DEFAULT_URL as DEMO_SOURCE_URL
from membership_pipeline.storage import DEFAULT_STORE_URL


def _setting(name: str, default: str) -> str | dg.EnvVar:
    """An EnvVar when set (its value stays out of the UI), else the embedded default."""
    return dg.EnvVar(name) if name in os.environ else default


def build_resources(
    source_url: str | dg.EnvVar | None = None, store_url: str | dg.EnvVar | None = None
) -> dict[str, object]:
    store = MembershipStoreResource(
        url=store_url or _setting("MEMBERSHIP_STORE_URL", DEFAULT_STORE_URL),
        cooldown_seconds=float(os.environ.get("MEMBERSHIP_COOLDOWN_SECONDS", 60)),
        lease_seconds=float(os.environ.get("MEMBERSHIP_LEASE_SECONDS", 600)),
        orphaned_run_grace_seconds=float(
            os.environ.get("MEMBERSHIP_ORPHANED_RUN_GRACE_SECONDS", 120)
        ),
    )
    return {
        "flagsmith": FlagsmithSourceResource(
            url=source_url or _setting("MEMBERSHIP_SOURCE_URL", DEMO_SOURCE_URL)
        ),
        "membership_store": store,
        "membership_io_manager": publishing_io_manager,
        # The default IO manager: a backfill's steps hand each other values through the store
        # (shards are staged into the shadow version), never through a local disk.
        "io_manager": shadow_staging_io_manager,
        "dispatch_policy": DispatchPolicyResource(**policy_settings_from_environment()),
    }


defs = dg.Definitions(
    assets=[segment_membership_bitmaps, segment_membership_counts],
    jobs=[bitmaps_job, edit_job],
    sensors=[
        environment_discovery_sensor,
        backfill_dispatch_sensor,
        backfill_retry_sensor,
        backfill_reconcile_sensor,
    ],
    schedules=[membership_refresh_schedule],
    resources=build_resources(),
    executor=executor_from_environment(),
)


def materialize_environment(
    instance: dg.DagsterInstance,
    environment_key: str,
    *,
    source_url: str | None = None,
    store_url: str | None = None,
    force: bool = True,
) -> dg.ExecuteInProcessResult:
    """Backfill one environment in this process, recorded in ``instance`` (the main job's path;
    ``force`` skips the cooldown, never the running guard)."""
    instance.add_dynamic_partitions(environments_partitions.name, [environment_key])
    return dg.materialize(
        [segment_membership_bitmaps, segment_membership_counts],
        partition_key=environment_key,
        instance=instance,
        resources=build_resources(source_url, store_url),
        run_config={
            "ops": {"segment_membership_bitmaps": {"config": {"force": force}}},
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        },
        raise_on_error=False,
    )
