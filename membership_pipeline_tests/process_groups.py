"""Stopping a service a test started in a process group of its own (``start_new_session``): a
signal it shuts down on, a wait, then SIGKILL for whatever it left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_group(process: subprocess.Popen, signum: int = signal.SIGINT, wait: float = 15) -> None:
    os.killpg(process.pid, signum)
    try:
        process.wait(wait)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
