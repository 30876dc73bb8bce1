"""Which Dagster executor runs a backfill's steps: the deployment's choice
(``MEMBERSHIP_EXECUTOR``, read when the definitions load), each with its settings in the
launchpad. Every one of them is Dagster's own; the store is the only state the steps share, so
any of them can run any step.

- ``multiprocess`` (default): the shards of a run in parallel on this machine, each step in a
  process forked from a server that has already imported the project (``forkserver`` with
  ``preload_modules``), so a step starts in well under a second instead of re-importing pandas,
  SQLAlchemy and Dagster (``step_server.py``: ``membership-run`` starts that server with the
  command);
- ``in_process``: every step in the run's own process (debugging, tiny environments);
- ``celery``: steps go to Celery workers through a broker (default ``$MEMBERSHIP_CELERY_BROKER``,
  else RabbitMQ on localhost; results over ``$MEMBERSHIP_CELERY_BACKEND``, else ``rpc://``);
  start workers with ``membership-celery-worker`` (``deploy/celery.yaml``);
- ``k8s``: one Kubernetes Job per step (dagster-k8s ``k8s_job_executor``), each step's pod with
  ``step_memory`` (default ``$MEMBERSHIP_K8S_STEP_MEMORY``, else 2Gi) and at most
  ``max_concurrent`` (default ``$MEMBERSHIP_K8S_MAX_CONCURRENT``, else 16) pods per run; see
  ``deploy/k8s/``.

A setting left out of the run config is read from its variable when the run starts (Dagster's
``EnvVar``), so a deployment sets it once for every run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg

from membership_pipeline.defs.membership.deployment import Deployment, ExecutorKind
from membership_pipeline.defs.membership.step_server import PRELOADED
from membership_pipeline.dispatch.settings import whole_number

BROKER_VARIABLE = "MEMBERSHIP_CELERY_BROKER"
DEFAULT_BROKER = "pyamqp://guest@127.0.0.1:5672//"
DEFAULT_BACKEND = "rpc://"
DEFAULT_STEP_MEMORY = "2Gi"
DEFAULT_K8S_MAX_CONCURRENT = 16


def executor_for(deployment: Deployment) -> dg.ExecutorDefinition:
    return _EXECUTORS[deployment.executor]()


def _multiprocess() -> dg.ExecutorDefinition:
    return dg.multiprocess_executor.configured(
        lambda config: {
            "max_concurrent": config["max_concurrent"],
            "start_method": {"forkserver": {"preload_modules": PRELOADED}},
        },
        name="multiprocess",
        config_schema={
            "max_concurrent": dg.Field(
                int,
                default_value=0,
                description="Steps of a run at once (0: one per core): the shards of a run "
                "run in parallel, each in a process forked from the step server.",
            )
        },
    )


def _in_process() -> dg.ExecutorDefinition:
    return dg.in_process_executor


def _celery() -> dg.ExecutorDefinition:
    # Imported only when chosen: the default path never pays for Celery's import.
    from dagster_celery import celery_executor

    def config(given: dict[str, Any]) -> dict[str, Any]:
        return {
            "broker": given.get("broker") or _variable(BROKER_VARIABLE, DEFAULT_BROKER),
            "backend": given.get("backend")
            or _variable("MEMBERSHIP_CELERY_BACKEND", DEFAULT_BACKEND),
        }

    return celery_executor.configured(
        config,
        name="celery",
        config_schema={
            "broker": dg.Field(
                dg.StringSource,
                is_required=False,
                description="The Celery broker the workers listen on (default: "
                f"$MEMBERSHIP_CELERY_BROKER, else {DEFAULT_BROKER}).",
            ),
            "backend": dg.Field(
                dg.StringSource,
                is_required=False,
                description="Where step results go (default: $MEMBERSHIP_CELERY_BACKEND, else "
                f"{DEFAULT_BACKEND}).",
            ),
        },
    )


def _k8s() -> dg.ExecutorDefinition:
    from dagster_k8s import k8s_job_executor

    def config(given: dict[str, Any]) -> dict[str, Any]:
        memory = given.get("step_memory") or _variable(
            "MEMBERSHIP_K8S_STEP_MEMORY", DEFAULT_STEP_MEMORY
        )
        concurrent = given.get("max_concurrent") or whole_number(
            "MEMBERSHIP_K8S_MAX_CONCURRENT",
            _variable("MEMBERSHIP_K8S_MAX_CONCURRENT", str(DEFAULT_K8S_MAX_CONCURRENT)),
        )
        return {
            "max_concurrent": concurrent,
            # A shard step's pod gets the memory its shard needs, guaranteed (requests =
            # limits), so the scheduler packs shards on nodes without overcommitting.
            "step_k8s_config": {
                "container_config": {
                    "resources": {
                        "requests": {"cpu": "1", "memory": memory},
                        "limits": {"memory": memory},
                    }
                }
            },
        }

    return k8s_job_executor.configured(
        config,
        name="k8s",
        config_schema={
            "step_memory": dg.Field(
                str,
                is_required=False,
                description="Memory of each step's pod, requested and limited (default: "
                f"$MEMBERSHIP_K8S_STEP_MEMORY, else {DEFAULT_STEP_MEMORY}); a shard of "
                "500,000 identities needs about 0.7 GB.",
            ),
            "max_concurrent": dg.Field(
                int,
                is_required=False,
                description="Step pods of one run at once (default: "
                f"$MEMBERSHIP_K8S_MAX_CONCURRENT, else {DEFAULT_K8S_MAX_CONCURRENT}).",
            ),
        },
    )


def _variable(name: str, default: str) -> str:
    """A deployment variable, read now (when the run's config is resolved, at its start)."""
    return dg.EnvVar(name).get_value(default) or default


_EXECUTORS: dict[ExecutorKind, Callable[[], dg.ExecutorDefinition]] = {
    ExecutorKind.MULTIPROCESS: _multiprocess,
    ExecutorKind.IN_PROCESS: _in_process,
    ExecutorKind.CELERY: _celery,
    ExecutorKind.K8S: _k8s,
}
