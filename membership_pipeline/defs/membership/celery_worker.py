"""``membership-celery-worker``: a Celery worker for ``MEMBERSHIP_EXECUTOR=celery`` runs —
``dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml`` once what it needs is
known to be there, so a missing setting is one line here rather than a traceback inside
dagster-celery.

- ``DAGSTER_HOME`` must name the runs' instance (the steps record their events in it): one line
  if it is unset or cannot be opened.
- The broker is ``$MEMBERSHIP_CELERY_BROKER``, else the runs' own default (RabbitMQ on this
  machine): the worker says which, and why, before it starts.

Arguments after ``--`` go to Celery (e.g. ``-- --concurrency 2``); the others to
``dagster-celery worker start`` (``--name``, ``--queue``, ``--loglevel``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from membership_pipeline.defs.dagster_instance import InstanceUnavailable, open_instance
from membership_pipeline.defs.membership.executors import BROKER_VARIABLE, DEFAULT_BROKER
from membership_pipeline.project_files import project_file

PROG = "membership-celery-worker"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-y",
        "--config-yaml",
        help="the workers' Celery settings (default: the project's deploy/celery.yaml)",
    )
    args, passed_on = parser.parse_known_args(argv)
    try:
        config = args.config_yaml or str(project_file("deploy/celery.yaml"))
        open_instance().dispose()
    except (InstanceUnavailable, FileNotFoundError) as error:
        raise SystemExit(f"{PROG}: {error}") from None
    if not os.environ.get(BROKER_VARIABLE):
        os.environ[BROKER_VARIABLE] = DEFAULT_BROKER
        print(
            f"{PROG}: {BROKER_VARIABLE} is not set: listening on {DEFAULT_BROKER}, the runs' "
            f"default (set {BROKER_VARIABLE} to the broker your runs use)",
            flush=True,
        )
    print(f"{PROG}: broker {os.environ[BROKER_VARIABLE]}, settings {config}", flush=True)
    # The worker runs `celery` from this environment's bin/, wherever PATH points.
    os.environ["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    command = shutil.which("dagster-celery") or "dagster-celery"
    os.execv(
        command,
        [command, "worker", "start", "-A", "dagster_celery.app", "-y", config, *passed_on],
    )
