"""The multiprocess executor's step server (Python's ``forkserver``), started as soon as a
command that runs a backfill here begins, instead of when its first step launches.

Dagster's multiprocess executor forks every step from a forkserver that first imports
``PRELOADED`` (the project, the engine and its compiled kernels, the ADBC driver): about 2.5 s
on this 2-core machine. Dagster starts it at the first step, after the command has spent about
2 s importing the same project, so a backfill waits for both imports one after the other.
Started from the top of ``definitions.py``, the server imports on the other core while the
command does. The stdlib keeps one forkserver per process and ``ensure_running`` reuses a live
one, so Dagster's own start later finds it running, with the same preload list (Dagster puts
its executor module first, as here).

No Dagster import here: this runs before Dagster is imported.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
from collections.abc import Sequence

EXECUTOR_VARIABLE = "MEMBERSHIP_EXECUTOR"
# The definitions, and what only the steps use (the engine, its compiled kernels loaded, the
# ADBC driver): the command line and the code location do not import those, the forkserver
# does, once, for every step it forks.
PRELOADED = [
    "membership_pipeline.definitions",
    "membership_pipeline.evaluation.engine",
    "membership_pipeline.evaluation.loaded_kernels",
    "adbc_driver_postgresql.dbapi",
]
# What Dagster's multiprocess executor preloads: its own module first, then the configured ones.
FORKSERVER_PRELOAD = ["dagster._core.executor.multiprocess", *PRELOADED]
# Commands whose process runs a job's steps through the executor: the CLI's in-process run, and
# the run worker that the webserver's and the daemon's run launcher start.
_RUNNING_COMMANDS = {("asset", "materialize"), ("job", "execute"), ("api", "execute_run")}


def runs_steps_here(argv: Sequence[str]) -> bool:
    """Whether this command line runs a job's steps in its own process (the forkserver and the
    steps it forks have ``-c`` as their command line, so they never start another one)."""
    return tuple(argv[1:3]) in _RUNNING_COMMANDS


def start_step_server_early(argv: Sequence[str]) -> bool:
    """Start the forkserver now when this command will run steps through the multiprocess
    executor; returns whether it did."""
    if os.environ.get(EXECUTOR_VARIABLE, "multiprocess") != "multiprocess":
        return False
    if not runs_steps_here(argv):
        return False
    multiprocessing.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
    # Spawns the server and returns: the server imports the preload list on its own.
    multiprocessing.forkserver.ensure_running()
    from membership_pipeline.structured_logging import get_logger  # after the start

    get_logger("executor").debug(
        "segment_membership.executor.step_server_started", preload=PRELOADED
    )
    return True
