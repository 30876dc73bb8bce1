"""Which Dagster executor runs a backfill's steps (``MEMBERSHIP_EXECUTOR``): configuration, not
code, like the resources. Every one of them is Dagster's own; the store is the only state the
steps share, so any of them can run any step.

- ``multiprocess`` (default): the shards of a run in parallel on this machine, each step in a
  process forked from a server that has already imported the project (``forkserver`` with
  ``preload_modules``), so a step starts in well under a second instead of re-importing pandas,
  SQLAlchemy and Dagster; the server starts with the command (``step_server``);
- ``in_process``: every step in the run's own process (debugging, tiny environments);
- ``celery``: steps go to Celery workers through a broker (``MEMBERSHIP_CELERY_BROKER``, default
  RabbitMQ on localhost; results over ``MEMBERSHIP_CELERY_BACKEND``, default ``rpc://``); start
  workers with ``dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml``;
- ``k8s``: one Kubernetes Job per step (dagster-k8s ``k8s_job_executor``), each step's pod with
  ``MEMBERSHIP_K8S_STEP_MEMORY`` (default 2Gi) and at most ``MEMBERSHIP_K8S_MAX_CONCURRENT``
  (default 16) pods per run; see ``deploy/k8s/``.
"""

from __future__ import annotations

import os

import dagster as dg

from membership_pipeline.defs.membership.step_server import EXECUTOR_VARIABLE, PRELOADED

DEFAULT_BROKER = "pyamqp://guest@127.0.0.1:5672//"
DEFAULT_STEP_MEMORY = "2Gi"


def executor_from_environment() -> dg.ExecutorDefinition:
    name = os.environ.get(EXECUTOR_VARIABLE, "multiprocess")
    if name == "multiprocess":
        return dg.multiprocess_executor.configured(
            {"start_method": {"forkserver": {"preload_modules": PRELOADED}}}
        )
    if name == "in_process":
        return dg.in_process_executor
    if name == "celery":
        # Imported only when chosen: the default path never pays for Celery's import.
        from dagster_celery import celery_executor

        return celery_executor.configured(
            {
                "broker": os.environ.get("MEMBERSHIP_CELERY_BROKER", DEFAULT_BROKER),
                "backend": os.environ.get("MEMBERSHIP_CELERY_BACKEND", "rpc://"),
            }
        )
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        memory = os.environ.get("MEMBERSHIP_K8S_STEP_MEMORY", DEFAULT_STEP_MEMORY)
        return k8s_job_executor.configured(
            {
                "max_concurrent": int(os.environ.get("MEMBERSHIP_K8S_MAX_CONCURRENT", "16")),
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
        )
    raise ValueError(
        f"{EXECUTOR_VARIABLE} must be multiprocess, in_process, celery or k8s, got {name!r}"
    )
