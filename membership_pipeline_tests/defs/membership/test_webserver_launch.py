"""The UI's Materialize button: a run launched through a real dagster-webserver's GraphQL API
(the mutation the button sends), executed by the webserver's run launcher."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

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
