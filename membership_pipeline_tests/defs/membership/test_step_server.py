"""The multiprocess executor's step server starts with ``membership-run`` (an explicit switch),
never as a side effect of importing the definitions (the CLI's end-to-end runs in
test_dagster_cli.py run through it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from membership_pipeline.defs.membership.step_server import PRELOADED

MEMBERSHIP_RUN = str(Path(sys.executable).with_name("membership-run"))

# Runs a command line as the given process would, then reports the forkserver's pid and
# command line (None when none was started).
PROBE = """
import json, sys
{run}
from multiprocessing import forkserver
import psutil
pid = forkserver._forkserver._forkserver_pid
print(json.dumps(pid and {{"pid": pid, "cmdline": psutil.Process(pid).cmdline()}}))
"""


def _probe(run: str, **env: str) -> dict | None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(run=run)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ends(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_importing_the_definitions_starts_no_server_whatever_the_command_line():
    materialize = ["dagster", "asset", "materialize", "--select", "x"]
    imported = f"sys.argv = {materialize!r}\nimport membership_pipeline.definitions"
    assert _probe(imported) is None
    # Not even a deployment's settings are read on import: bad ones do not fail it.
    assert _probe(imported, MEMBERSHIP_EXECUTOR="slurm", MEMBERSHIP_SHARD_IDENTITIES="x") is None


def test_the_switch_starts_the_server_with_the_preload_list():
    started = _probe(
        "from membership_pipeline.defs.membership.step_server import start_step_server\n"
        "start_step_server()"
    )
    assert started is not None
    command = " ".join(started["cmdline"])
    assert "forkserver" in command
    assert all(module in command for module in PRELOADED)
    assert not any(module.startswith("dagster.") for module in PRELOADED)  # no private path
    assert _ends(started["pid"])  # with the command that started it


def test_membership_run_runs_the_dagster_command_it_is_given():
    done = subprocess.run(
        [MEMBERSHIP_RUN, "dagster", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("dagster, version ")


def test_membership_run_refuses_anything_but_a_dagster_command():
    done = subprocess.run([MEMBERSHIP_RUN, "ls", "-l"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: membership-run [--in-process] {dagster|dg} ARGS...")
