"""The UI's Materialize button: a run launched through a real dagster-webserver's GraphQL API
(the mutation the button sends), executed by the webserver's run launcher."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from membership_pipeline.defs.membership.backfill_events import GUARD_TAG
from membership_pipeline.storage import BackfillStatus, migrate
from membership_pipeline_tests.defs.membership.conftest import ROOT

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


@pytest.fixture
def webserver(tmp_path, demo_source):
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The default run coordinator launches at once (the queued one needs dagster-daemon).
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster._core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
    )
    store_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(store_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MEMBERSHIP_SOURCE_URL": demo_source.url,
        "MEMBERSHIP_STORE_URL": store_url,
        "MEMBERSHIP_SHARD_IDENTITIES": "100",  # the environment's 375 identities in 4 shards
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
         "-w", "workspace.yaml"],
        cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # its group holds the code server it starts: stopped together
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "webserver did not start"
            time.sleep(0.5)
    yield port, store_url, environment
    os.killpg(server.pid, signal.SIGINT)  # the webserver shuts down on SIGINT, then the rest
    try:
        server.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
    shutil.rmtree(home, ignore_errors=True)


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
    os.environ["DAGSTER_HOME"] = environment["DAGSTER_HOME"]
    try:
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions("environments", [env_key])
    finally:
        del os.environ["DAGSTER_HOME"]
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
