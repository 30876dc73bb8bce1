"""A deployment's MEMBERSHIP_* variables: values bound to the resources' fields as Dagster
``EnvVar`` (read at launch, kept out of the UI), shape read when the definitions load, and a bad
value named in one line."""

from __future__ import annotations

import dagster as dg
import pytest

from membership_pipeline.defs.membership.definitions import build_resources, membership_definitions
from membership_pipeline.defs.membership.deployment import (
    DEFAULT_GC_CRON,
    DEFAULT_REFRESH_CRON,
    DEFAULT_SHARD_RETRIES,
    RESOURCE_VARIABLES,
    Deployment,
)
from membership_pipeline.defs.membership.garbage_collection import GC_SCHEDULE
from membership_pipeline.defs.membership.schedules import SCHEDULE_NAME
from membership_pipeline.model.errors import InvalidSetting
from membership_pipeline.model.shard_plan import DEFAULT_SHARD_IDENTITIES

SET = {
    "MEMBERSHIP_STORE_URL": "postgresql+psycopg2://membership:s3cret@db/membership",
    "MEMBERSHIP_COOLDOWN_SECONDS": "5",
    "MEMBERSHIP_ORG_CAPS": "12:0,7:50",
    "MEMBERSHIP_DETECTION_ROWS_PER_TICK": "100000",
    "MEMBERSHIP_SHARD_IDENTITIES": "1_000_000",
    "MEMBERSHIP_SHARD_RETRIES": "0",
    "MEMBERSHIP_REFRESH_CRON": "*/30 * * * *",
    "MEMBERSHIP_GC_CRON": "*/5 * * * *",
    "MEMBERSHIP_EXECUTOR": "in_process",
}


def bitmaps_graph(definitions: dg.Definitions) -> dg.GraphDefinition:
    repository = definitions.get_repository_def()
    node = repository.assets_defs_by_key[dg.AssetKey("segment_membership_bitmaps")].node_def
    assert isinstance(node, dg.GraphDefinition)
    return node


def test_values_a_deployment_sets_are_bound_to_their_variables_the_rest_keep_defaults():
    resources = build_resources(deployment=Deployment(SET))
    config = {
        name: resource._convert_to_config_dictionary()  # what Dagster resolves at launch
        for name, resource in resources.items()
        if name in RESOURCE_VARIABLES
    }
    assert config["membership_store"] == {
        "url": {"env": "MEMBERSHIP_STORE_URL"},  # never the value (it holds a password)
        "cooldown_seconds": {"env": "MEMBERSHIP_COOLDOWN_SECONDS"},
        "change_cooldown_seconds": 2,
        "lease_seconds": 600,
        "orphaned_run_grace_seconds": 120,
        "chunk_cache_mb": 256,
    }
    assert config["dispatch_policy"]["organisation_caps"] == {"env": "MEMBERSHIP_ORG_CAPS"}
    assert config["dispatch_policy"]["max_attempts"] == 3
    assert config["flagsmith"] == {
        "url": "sqlite:///.membership/flagsmith_demo.sqlite",
        "detection_rows_per_tick": {"env": "MEMBERSHIP_DETECTION_ROWS_PER_TICK"},
    }
    # A URL given by the caller (a test, the demo) wins over the deployment's.
    given = build_resources(store_url="sqlite:///given.sqlite", deployment=Deployment(SET))
    assert given["membership_store"]._convert_to_config_dictionary()["url"] == (
        "sqlite:///given.sqlite"
    )


def test_the_shape_a_deployment_chooses_is_read_when_the_definitions_load():
    chosen = membership_definitions(Deployment(SET))
    graph = bitmaps_graph(chosen)
    assert graph.node_dict["backfill_shard"].retry_policy == dg.RetryPolicy(max_retries=0, delay=1)
    outer = graph.config_mapping.config_schema.config_type.fields  # the launchpad's block
    assert outer["shard_identities"].default_value == 1_000_000
    schedules = {s.name: s.cron_schedule for s in chosen.get_repository_def().schedule_defs}
    assert schedules == {SCHEDULE_NAME: "*/30 * * * *", GC_SCHEDULE: "*/5 * * * *"}
    assert chosen.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"

    embedded = membership_definitions(Deployment({}))
    graph = bitmaps_graph(embedded)
    retries = graph.node_dict["backfill_shard"].retry_policy
    assert retries.max_retries == DEFAULT_SHARD_RETRIES
    shard_identities = graph.config_mapping.config_schema.config_type.fields["shard_identities"]
    assert shard_identities.default_value == DEFAULT_SHARD_IDENTITIES
    schedules = {s.name: s.cron_schedule for s in embedded.get_repository_def().schedule_defs}
    assert schedules == {SCHEDULE_NAME: DEFAULT_REFRESH_CRON, GC_SCHEDULE: DEFAULT_GC_CRON}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MEMBERSHIP_EXECUTOR", "slurm", "MEMBERSHIP_EXECUTOR must be multiprocess, in_process, "
                                         "celery or k8s, got 'slurm'"),
        ("MEMBERSHIP_SHARD_IDENTITIES", "0", "MEMBERSHIP_SHARD_IDENTITIES must be a positive "
                                             "integer, got '0'"),
        ("MEMBERSHIP_SHARD_RETRIES", "twice", "MEMBERSHIP_SHARD_RETRIES must be a whole number "
                                              "of at least 0, got 'twice'"),
        ("MEMBERSHIP_REFRESH_CRON", "every hour", "MEMBERSHIP_REFRESH_CRON: "),
        ("MEMBERSHIP_GC_CRON", "often", "MEMBERSHIP_GC_CRON: "),
    ],
)  # fmt: skip
def test_a_bad_variable_is_one_line_naming_it(variable, value, message):
    with pytest.raises(InvalidSetting) as raised:
        membership_definitions(Deployment({variable: value}))
    said = str(raised.value)
    assert said.startswith(message) and "\n" not in said


def test_the_capture_interval_is_shape_read_when_the_definitions_load():
    from membership_pipeline.defs.membership.definitions import membership_definitions
    from membership_pipeline.model.errors import InvalidSetting

    assert Deployment({}).capture_interval == 5
    variable = "MEMBERSHIP_CAPTURE_INTERVAL_SECONDS"
    loaded = membership_definitions(Deployment({variable: "2"})).get_repository_def()
    [sensor] = [s for s in loaded.sensor_defs if s.name == "identity_capture_sensor"]
    assert sensor.minimum_interval_seconds == 2
    for bad in ("0", "soon"):
        with pytest.raises(InvalidSetting) as refused:
            _ = Deployment({variable: bad}).capture_interval
        assert str(refused.value).startswith(f"{variable} must be") and bad in str(refused.value)
