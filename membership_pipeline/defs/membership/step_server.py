"""The multiprocess executor's step server (Python's ``forkserver``), started as soon as a
command that runs a backfill here begins, instead of when its first step launches; for a run
on the in-process executor, the same imports on a thread of the command itself.

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

import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import threading
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
# Jobs on Dagster's in-process executor (see jobs.py): a run of one forks no step, and a
# server importing on the other core would only slow it down. Their name is on the command line
# (``-j NAME``), or inside the run worker's serialized arguments.
IN_PROCESS_JOBS = ("segment_membership_edit",)


def runs_steps_here(argv: Sequence[str]) -> bool:
    """Whether this command line runs a job's steps through the multiprocess executor (the
    forkserver and the steps it forks have ``-c`` as their command line, so they never start
    another one)."""
    return runs_a_job(argv) and not runs_in_process(argv)


def runs_a_job(argv: Sequence[str]) -> bool:
    return tuple(argv[1:3]) in _RUNNING_COMMANDS


def runs_in_process(argv: Sequence[str]) -> bool:
    """Whether the job this command runs is one of the in-process jobs."""
    return any(job in argument for job in IN_PROCESS_JOBS for argument in argv[3:])


def start_preloading(argv: Sequence[str]) -> threading.Thread | None:
    """For a command that runs an in-process job (or any job, with the in-process executor):
    import what the steps use (the engine's compiled kernels, the ADBC driver) on a thread now,
    while the command imports Dagster and the project, instead of in the first shard step.
    Python's import lock makes a step that needs them first wait for this import."""
    in_process = os.environ.get(EXECUTOR_VARIABLE, "multiprocess") == "in_process"
    if not runs_a_job(argv) or not (in_process or runs_in_process(argv)):
        return None
    return preload_in_background()


def preload_in_background() -> threading.Thread:
    """Import what the steps use on a daemon thread (also called by a run's first step on the
    in-process executor, for runs that a code server starts, whose command line tells nothing)."""
    thread = threading.Thread(
        target=lambda: [importlib.import_module(name) for name in PRELOADED[1:]],
        name="preload-steps",
        daemon=True,
    )
    thread.start()
    return thread


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
