"""``membership-run``: a Dagster command run with the multiprocess executor's step server (Python's
``forkserver``) started first — an explicit switch; importing the definitions starts nothing.

    membership-run dg launch --assets segment_membership_bitmaps --partition env_1_1_d9c282
    membership-run dagster asset materialize -m membership_pipeline.definitions \\
        --select segment_membership_bitmaps --partition env_1_1_d9c282
    membership-run --in-process dagster job execute -m membership_pipeline.definitions \\
        -j segment_membership_edit ...

Dagster's multiprocess executor forks every step from a forkserver that first imports
``PRELOADED`` (the project, the engine and its compiled kernels, the ADBC driver): about 2.5 s
on this 2-core machine. Dagster starts it at the first step, after the command has spent about
2 s importing the same project, so a backfill waits for both imports one after the other. This
command starts the server before anything else, so it imports on the other core while the
command imports Dagster, then runs the command (its installed console script) in this process.
The stdlib keeps one forkserver per process and ``ensure_running`` reuses a live one, so
Dagster's executor finds it running. ``--in-process`` (a run whose steps run in the command's
own process: the edit job, or the ``in_process`` executor) imports what the steps use on a
thread instead.

Runs that the daemon or the webserver launches start their own run worker; they do not go
through this command and start the server at their first step, as Dagster does.

No Dagster import here: this runs before Dagster is imported.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import multiprocessing
import multiprocessing.forkserver
import sys
import threading
from collections.abc import Sequence

# The definitions, and what only the steps use (the engine, its compiled kernels loaded, the
# ADBC driver): the command line and the code location do not import those, the forkserver
# does, once, for every step it forks.
PRELOADED = [
    "membership_pipeline.definitions",
    "membership_pipeline.evaluation.engine",
    "membership_pipeline.evaluation.loaded_kernels",
    "adbc_driver_postgresql.dbapi",
]
COMMANDS = ("dagster", "dg")
USAGE = (
    "usage: membership-run [--in-process] {dagster|dg} ARGS...\n"
    "runs a Dagster command in this process with the multiprocess executor's step server "
    "started first\n(--in-process: the steps run in this process; their imports start instead)"
)


def start_step_server() -> None:
    """Spawn the forkserver now; it imports ``PRELOADED`` on its own while this process goes
    on."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOADED)
    multiprocessing.forkserver.ensure_running()


def preload_in_background() -> threading.Thread:
    """Import what the steps use on a daemon thread: for steps that run in this process (also
    called by a run's first step on the in-process executor, for runs that a code server
    starts). Python's import lock makes a step that needs them first wait for this import."""
    thread = threading.Thread(
        target=lambda: [importlib.import_module(name) for name in PRELOADED[1:]],
        name="preload-steps",
        daemon=True,
    )
    thread.start()
    return thread


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    in_process = args[:1] == ["--in-process"]
    command = args[1:] if in_process else args
    if not command or command[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    if in_process:
        preload_in_background()
    else:
        start_step_server()
    [script] = importlib.metadata.entry_points(group="console_scripts", name=command[0])
    sys.argv = command
    sys.exit(script.load()())
