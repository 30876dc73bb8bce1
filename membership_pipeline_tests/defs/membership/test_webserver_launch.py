"""The UI's Materialize button: a run launched through a real dagster-webserver's GraphQL API
(the mutation the button sends), executed by the webserver's run launcher."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import yaml

from membership_pipeline.defs.membership.backfill_events import GUARD_TAG
from membership_pipeline.storage import BackfillStatus
from membership_pipeline_tests.defs.membership.conftest import add_environment_partition

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""
RUN = """
query Run($id: ID!) {
  runOrError(runId: $id) { ... on Run { status tags { key value } stepStats { stepKey status } } }
}"""
LOCATIONS = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"""


def graphql(port: int, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


def launch_and_wait(port: int, location: str, env_key: str) -> dict[str, Any]:
    params = {
        "selector": {
            "repositoryLocationName": location,
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["segment_membership_bitmaps"]}],
            "assetCheckSelection": [],
        },
        "mode": "default",
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": env_key}]},
    }
    launched = graphql(port, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        run = graphql(port, RUN, {"id": run_id})["runOrError"]
        if run["status"] in {"SUCCESS", "FAILURE", "CANCELED"}:
            return {"run_id": run_id, **run}
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish: {run['status']}")


def test_the_materialize_button_backfills_then_guards(webserver, demo_source):
    from membership_pipeline.storage import MembershipStore

    port, store_url, environment = webserver
    env_key = demo_source.environments[1]["api_key"]
    add_environment_partition(environment["DAGSTER_HOME"], env_key)
    [repository] = graphql(port, LOCATIONS)["repositoriesOrError"]["nodes"]
    location = repository["location"]["name"]

    first = launch_and_wait(port, location, env_key)
    assert first["status"] == "SUCCESS"
    steps = {step["stepKey"]: step["status"] for step in first["stepStats"]}
    assert steps == {  # what the UI's run page shows: one step per shard
        "segment_membership_bitmaps.plan_shards": "SUCCESS",
        **{f"segment_membership_bitmaps.backfill_shard[shard_{i}]": "SUCCESS" for i in range(4)},
        "segment_membership_bitmaps.publish_version": "SUCCESS",
    }
    with MembershipStore(store_url) as store:
        done = store.metadata(env_key)
        assert done.last_backfill_status is BackfillStatus.SUCCEEDED
        assert done.claim_owner == first["run_id"]
        assert store.reader().published(env_key).identity_count > 0

    second = launch_and_wait(port, location, env_key)  # pressed again, within the cooldown
    assert second["status"] == "SUCCESS"
    assert {"key": GUARD_TAG, "value": "skipped: cooldown"} in second["tags"]
    with MembershipStore(store_url) as store:
        assert store.metadata(env_key) == done


CONFIG_SCHEMA = """
query Schema($selector: PipelineSelector!) {
  runConfigSchemaOrError(selector: $selector) {
    __typename
    ... on RunConfigSchema {
      rootDefaultYaml
      allConfigTypes {
        key
        ... on CompositeConfigType { fields { name description defaultValueAsJson } }
        ... on EnumConfigType { values { value } }
      }
    }
    ... on PythonError { message }
  }
}"""
# Every setting a run or a deployment may set, and the variable a deployment sets it by.
SETTINGS = {
    "url": ("MEMBERSHIP_SOURCE_URL", "MEMBERSHIP_STORE_URL"),
    "detection_rows_per_tick": ("MEMBERSHIP_DETECTION_ROWS_PER_TICK",),
    "cooldown_seconds": ("MEMBERSHIP_COOLDOWN_SECONDS",),
    "change_cooldown_seconds": ("MEMBERSHIP_CHANGE_COOLDOWN_SECONDS",),
    "slot": ("MEMBERSHIP_CAPTURE_SLOT",),
    "publication": ("MEMBERSHIP_CAPTURE_PUBLICATION",),
    "batch_changes": ("MEMBERSHIP_CAPTURE_BATCH_CHANGES",),
    "delta_max_share": (),
    "lease_seconds": ("MEMBERSHIP_LEASE_SECONDS",),
    "orphaned_run_grace_seconds": ("MEMBERSHIP_ORPHANED_RUN_GRACE_SECONDS",),
    "coalesce_seconds": ("MEMBERSHIP_COALESCE_SECONDS",),
    "dedup_ttl_seconds": ("MEMBERSHIP_DEDUP_TTL_SECONDS",),
    "launches_per_organisation_per_minute": ("MEMBERSHIP_ORG_LAUNCHES_PER_MINUTE",),
    "delta_launches_per_organisation_per_minute": ("MEMBERSHIP_ORG_DELTA_LAUNCHES_PER_MINUTE",),
    "organisation_caps": ("MEMBERSHIP_ORG_CAPS",),
    "max_request_age_seconds": ("MEMBERSHIP_MAX_REQUEST_AGE_SECONDS",),
    "max_attempts": ("MEMBERSHIP_MAX_ATTEMPTS",),
    "shard_identities": ("MEMBERSHIP_SHARD_IDENTITIES",),
    "mode": (),
    "force": (),
    "audit_sample_size": (),
    "incremental_shard_identities": (),
    "max_concurrent": (),
}


def test_the_launchpad_shows_every_setting_with_its_default_and_description(webserver):
    """What the launchpad scaffolds and explains: the deployment's values as the defaults (the
    webserver runs with MEMBERSHIP_SHARD_IDENTITIES=100 and both URLs set, which the launchpad
    shows as the variables they come from, not their values)."""
    port, _, _ = webserver
    [repository] = graphql(port, LOCATIONS)["repositoriesOrError"]["nodes"]
    selector = {
        "repositoryLocationName": repository["location"]["name"],
        "repositoryName": "__repository__",
        "pipelineName": "segment_membership_backfill",
    }
    schema = graphql(port, CONFIG_SCHEMA, {"selector": selector})["runConfigSchemaOrError"]
    assert schema["__typename"] == "RunConfigSchema", schema
    defaults = yaml.safe_load(schema["rootDefaultYaml"])
    backfill = defaults["ops"]["segment_membership_bitmaps"]["config"]
    assert (backfill["shard_identities"], backfill["mode"], backfill["force"]) == (
        100,
        "full",
        False,
    )
    store = defaults["resources"]["membership_store"]["config"]
    assert store["url"] == {"env": "MEMBERSHIP_STORE_URL"}  # the variable, never its value
    assert (store["cooldown_seconds"], store["lease_seconds"]) == (60, 600)
    assert defaults["resources"]["flagsmith"]["config"]["url"] == {"env": "MEMBERSHIP_SOURCE_URL"}
    assert defaults["execution"]["config"] == {"max_concurrent": 0}
    fields: dict[str, list[dict[str, Any]]] = {}
    for config_type in schema["allConfigTypes"]:
        for field in config_type.get("fields") or []:
            fields.setdefault(field["name"], []).append(field)
    for name, variables in SETTINGS.items():
        assert fields[name], name
        for field in fields[name]:
            assert field["description"] and field["defaultValueAsJson"] is not None, field
        described = " ".join(field["description"] for field in fields[name])
        assert all(f"${variable}" in described for variable in variables), (name, described)
    modes = [t["values"] for t in schema["allConfigTypes"] if t.get("values")]
    assert [{"value": "full"}, {"value": "incremental"}, {"value": "delta"}] in modes  # a choice
