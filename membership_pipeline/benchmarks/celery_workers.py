"""Celery workers for a benchmark run on ``MEMBERSHIP_EXECUTOR=celery``, set up as the README's
Scaling out deploys them: RabbitMQ (a vhost of the run's own, so no other run's tasks reach
these workers), a Dagster instance on PostgreSQL (``deploy/dagster.postgres.yaml`` in a scratch
database: the run and the workers must share it), and one worker started as the README starts
one (``membership-celery-worker``: ``dagster-celery worker`` with the shipped
``deploy/celery.yaml``) with ``--concurrency`` processes, in a process group of its own, stopped
with everything it forked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, suppress
from pathlib import Path

from membership_pipeline.benchmarks.scratch_database import ScratchServerDatabase, progress
from membership_pipeline.project_files import PROJECT_ROOT as ROOT

RABBITMQ = "127.0.0.1:5672"
READY_SECONDS = 120


class CeleryWorkers:
    """``with CeleryWorkers(environment, processes) as workers``: ``workers.environment`` is
    ``environment`` plus what a run on these workers needs; ``workers.pid`` the worker's main
    process (its pool processes are its children)."""

    def __init__(self, environment: dict[str, str], processes: int) -> None:
        self.base = environment
        self.processes = processes

    def __enter__(self) -> CeleryWorkers:
        self.stack = ExitStack()
        try:
            self._start()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stack.close()

    def _start(self) -> None:
        broker = self.stack.enter_context(_vhost())
        home = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="membership-celery-"))
        shutil.copy(ROOT / "deploy" / "dagster.postgres.yaml", Path(home, "dagster.yaml"))
        bin_dir = str(Path(sys.executable).parent)
        self.environment = {
            **self.base,
            "PATH": f"{bin_dir}{os.pathsep}{self.base.get('PATH', '')}",  # it execs `celery`
            "DAGSTER_HOME": home,
            "DAGSTER_PG_URL": self.stack.enter_context(ScratchServerDatabase()),
            "MEMBERSHIP_EXECUTOR": "celery",
            "MEMBERSHIP_CELERY_BROKER": broker,
        }
        self.log = Path(home, "worker.log")
        progress(f"starting a Celery worker of {self.processes} processes")
        with self.log.open("w") as log:
            worker = subprocess.Popen(
                [Path(bin_dir, "membership-celery-worker"), "--name",
                 f"membership-bench-{os.getpid()}", "--", "--concurrency", str(self.processes)],
                cwd=ROOT, env=self.environment, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stopped with every process it forked
            )  # fmt: skip
        self.pid = worker.pid
        self.stack.callback(_stop, worker)
        self._wait_ready(worker)

    def tasks_succeeded(self) -> int:
        """Tasks (Dagster steps) the worker finished, from its log."""
        return self.log.read_text().count(" succeeded in ")

    def processes_replaced(self, parents: dict[int, int]) -> int:
        """Pool processes replaced during a run (``worker_max_memory_per_child``), from the
        processes seen under the worker (``parents``: pid → parent): ``dagster-celery`` runs
        ``celery``, whose children are the pool; more of them than ``processes`` were made to
        replace some. (The pool process's own warning is not logged by the worker.)"""
        celery = {pid for pid, parent in parents.items() if parent == self.pid}
        pool = {pid for pid, parent in parents.items() if parent in celery}
        return max(len(pool) - self.processes, 0)

    def _wait_ready(self, worker: subprocess.Popen) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise SystemExit(f"the Celery worker exited:\n{self.log.read_text()[-3000:]}")
            if " ready." in self.log.read_text():
                return
            time.sleep(0.5)
        raise SystemExit(
            f"the Celery worker was not ready in {READY_SECONDS} s:\n{self.log.read_text()[-3000:]}"
        )


class _vhost:
    """A RabbitMQ vhost made for the run and deleted after it; its broker URL."""

    def __enter__(self) -> str:
        if shutil.which("rabbitmqctl") is None:
            raise SystemExit("rabbitmqctl is not installed: the Celery run needs RabbitMQ")
        self.name = f"mp_bench_{uuid.uuid4().hex[:10]}"
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", self.name], check=True, timeout=60)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", self.name, "guest", ".*", ".*", ".*"],
            check=True,
            timeout=60,
        )
        return f"pyamqp://guest:guest@{RABBITMQ}/{self.name}"

    def __exit__(self, *_: object) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.name], check=False, timeout=60)


def _stop(worker: subprocess.Popen) -> None:
    # Celery's warm shutdown on SIGTERM; the group's kill catches a pool process left behind.
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(worker.pid, signum)
            worker.wait(30)
            break
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
    with suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
