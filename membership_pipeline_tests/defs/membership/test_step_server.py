"""The multiprocess executor's step server starts with a command that runs steps, and only
then (the CLI's end-to-end runs in test_dagster_cli.py run on it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from membership_pipeline.defs.membership.step_server import FORKSERVER_PRELOAD, runs_steps_here

# Imports the definitions as the given command line would, then reports the forkserver's pid
# and command line (None when none was started).
PROBE = """
import json, sys
sys.argv = json.loads(sys.argv[1])
import membership_pipeline.definitions  # noqa: F401
from multiprocessing import forkserver
import psutil
pid = forkserver._forkserver._forkserver_pid
print(json.dumps(pid and {"pid": pid, "cmdline": psutil.Process(pid).cmdline()}))
"""


def _probe(argv: list[str], executor: str = "multiprocess") -> dict | None:
    env = {**os.environ, "MEMBERSHIP_EXECUTOR": executor}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["dagster", "asset", "materialize", "--select", "x"], True),
        (["dagster", "job", "execute", "-j", "x"], True),
        (["dagster", "api", "execute_run", "{}"], True),
        # The in-process edit job forks no step (a run worker's arguments name its job).
        (["dagster", "job", "execute", "-j", "segment_membership_edit"], False),
        (["dagster", "api", "execute_run", '{"job_name": "segment_membership_edit"}'], False),
        (["dagster", "api", "grpc", "--port", "1"], False),
        (["dagster-webserver", "-p", "3000"], False),
        (["dagster-daemon", "run"], False),
        (["-c"], False),  # the forkserver itself and every step it forks
        ([], False),
    ],
)
def test_only_commands_that_run_steps_start_the_server(argv: list[str], expected: bool) -> None:
    assert runs_steps_here(argv) is expected


def test_a_materialize_command_starts_the_server_with_the_preload_list() -> None:
    started = _probe(["dagster", "asset", "materialize", "--select", "x"])
    assert started is not None
    command = " ".join(started["cmdline"])
    assert "forkserver" in command
    assert all(module in command for module in FORKSERVER_PRELOAD)
    assert _ends(started["pid"])  # with the command that started it


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


def test_no_server_for_the_code_location_or_another_executor() -> None:
    assert _probe(["dagster", "api", "grpc", "--port", "1"]) is None
    assert _probe(["dagster", "asset", "materialize"], executor="in_process") is None
