"""The deployment configuration in deploy/ validates against the schemas of the Dagster
libraries that read it: the Kubernetes instance (K8sRunLauncher, PostgreSQL storage), the
k8s_job_executor the definitions build with MEMBERSHIP_EXECUTOR=k8s, the Helm values, and the
Celery workers' config."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.system_config.objects import ResolvedRunConfig
from dagster_celery.cli import get_validated_config
from dagster_k8s import K8sRunLauncher
from dagster_postgres import DagsterPostgresStorage

from membership_pipeline.defs.membership.assets import (
    segment_membership_bitmaps,
    segment_membership_counts,
)
from membership_pipeline.defs.membership.definitions import build_resources
from membership_pipeline.defs.membership.deployment import Deployment
from membership_pipeline.defs.membership.executors import executor_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PG_ENV = {
    "DAGSTER_PG_HOST": "postgres",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "secret",
    "DAGSTER_PG_DB": "dagster",
}


def assert_valid(config_type: object, value: object) -> None:
    processed = process_config(config_type, value)
    assert processed.success, [error.message for error in processed.errors or []]


def test_the_kubernetes_instance_validates(monkeypatch):
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(DEPLOY / "k8s"))  # the instance schema
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert_valid(K8sRunLauncher.config_type(), launcher["config"])
    assert_valid(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    # The driver installed: SQLAlchemy 2.1 reads a bare "postgresql" scheme as psycopg 3.
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    limits = config["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {
        "key": "dagster/partition",
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    } in limits


def test_the_definitions_run_steps_as_kubernetes_jobs(monkeypatch):
    monkeypatch.setenv("MEMBERSHIP_EXECUTOR", "k8s")
    monkeypatch.setenv("MEMBERSHIP_K8S_STEP_MEMORY", "3Gi")  # read when the run starts
    executor = executor_for(Deployment.current())
    assert executor.name == "k8s"
    defs = dg.Definitions(
        assets=[segment_membership_bitmaps, segment_membership_counts],
        resources=build_resources(),
        executor=executor,
    )
    job = defs.resolve_implicit_global_asset_job_def()
    resolved = ResolvedRunConfig.build(job, {})  # the executor's configured values validate
    step_config = resolved.execution.execution_engine_config["step_k8s_config"]
    resources = step_config["container_config"]["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "3Gi"


def test_an_unknown_executor_is_named(monkeypatch):
    monkeypatch.setenv("MEMBERSHIP_EXECUTOR", "slurm")
    with pytest.raises(ValueError, match=r"MEMBERSHIP_EXECUTOR must be multiprocess.*got 'slurm'"):
        executor_for(Deployment.current())


def test_the_helm_values_match_the_instance_and_the_code():
    values = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())
    instance = yaml.safe_load((DEPLOY / "k8s" / "dagster.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "membership_pipeline.definitions"]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert env["MEMBERSHIP_EXECUTOR"] == "k8s"
    assert int(env["MEMBERSHIP_SHARD_IDENTITIES"]) > 0
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["jobNamespace"] == instance["run_launcher"]["config"]["job_namespace"]
    assert values["postgresql"]["enabled"] is False
    assert (
        values["postgresql"]["postgresqlScheme"]
        == instance["storage"]["postgres"]["postgres_db"]["scheme"]
    )
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert (
        queued["tagConcurrencyLimits"]
        == instance["run_coordinator"]["config"]["tag_concurrency_limits"]
    )


def test_the_celery_worker_config_validates(monkeypatch):
    monkeypatch.setenv("MEMBERSHIP_CELERY_BROKER", "pyamqp://guest:guest@rabbitmq:5672//")
    config = get_validated_config(str(DEPLOY / "celery.yaml"))
    assert config["broker"] == "pyamqp://guest:guest@rabbitmq:5672//"
    assert config["config_source"]["worker_prefetch_multiplier"] == 1
