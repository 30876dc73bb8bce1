"""One environment's backfill in this process, recorded in a Dagster instance: the demo's path
(and the benchmarks'), the same asset and guard as every other launch."""

from __future__ import annotations

import dagster as dg

from membership_pipeline.defs.membership.assets import (
    segment_membership_bitmaps,
    segment_membership_counts,
)
from membership_pipeline.defs.membership.definitions import build_resources
from membership_pipeline.defs.membership.partitions import environments_partitions


def materialize_environment(
    instance: dg.DagsterInstance,
    environment_key: str,
    *,
    source_url: str | None = None,
    store_url: str | None = None,
    force: bool = True,
) -> dg.ExecuteInProcessResult:
    """``force`` skips the cooldown, never the running guard."""
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
