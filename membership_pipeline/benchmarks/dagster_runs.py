"""Running ``dagster asset materialize`` of one environment in a fresh process, for the
benchmarks: wall time, time to the flip, and the peak RSS of every process of the run. Every
command goes through ``membership-run`` (the step server, or the steps' imports, start with the
command: see ``defs/membership/step_server.py``). On the ``celery`` executor the run's steps go
to a Celery worker started for the run (``celery_workers.py``), whose processes are sampled too."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from membership_pipeline.benchmarks.celery_workers import CeleryWorkers
from membership_pipeline.benchmarks.scratch_database import progress
from membership_pipeline.evaluation.kernels import warm
from membership_pipeline.process_memory import peak_rss_mb
from membership_pipeline.storage import MembershipStore


def dagster_command(*args: str, in_process: bool = False, switch: bool = True) -> list[str]:
    """``dagster ARGS`` through ``membership-run`` (``switch=False``: plain ``dagster``), from
    this environment's scripts."""
    if not switch:
        return [str(Path(sys.executable).with_name("dagster")), *args]
    membership_run = str(Path(sys.executable).with_name("membership-run"))
    return [membership_run, *(["--in-process"] if in_process else []), "dagster", *args]


def materialize(
    home: str,
    source_url: str,
    store_url: str,
    env_key: str,
    shard_identities: int,
    executor: str = "multiprocess",
    step_server: bool = True,
    celery_processes: int = 2,
) -> dict:
    """One ``dagster asset materialize`` of the environment's partition (forced past the
    cooldown) in a fresh process: wall time, process start → flip, the shards' reports and
    the peak RSS of every process of the run. ``step_server=False``: plain ``dagster``, without
    ``membership-run``'s early start. ``executor="celery"``: on a worker of
    ``celery_processes`` processes, started (and its start not timed) before the run and stopped
    after it."""
    _compile_kernels()
    environment = {
        **os.environ,
        "DAGSTER_HOME": home,
        "MEMBERSHIP_SOURCE_URL": source_url,
        "MEMBERSHIP_STORE_URL": store_url,
        "MEMBERSHIP_SHARD_IDENTITIES": str(shard_identities),
        "MEMBERSHIP_EXECUTOR": executor,
    }
    with ExitStack() as stack:
        roots = []
        if executor == "celery":
            workers = stack.enter_context(CeleryWorkers(environment, celery_processes))
            environment, roots = workers.environment, [workers.pid]
        run = _run(environment, store_url, env_key, shard_identities, executor, step_server, roots)
        if executor == "celery":
            run["worker_steps"] = workers.tasks_succeeded()
            run["processes_replaced"] = workers.processes_replaced(run["parents"])
        return run


@functools.cache
def _compile_kernels() -> None:
    """numba's kernels compiled into its on-disk cache before the first measured run: on a
    fresh machine the first run's steps would otherwise each compile them (measured: a first
    1M backfill of 30.9 s where the next took 10.9 s)."""
    progress(f"numba kernels compiled (or loaded from its cache) in {warm():.1f} s")


def _run(
    environment: dict[str, str],
    store_url: str,
    env_key: str,
    shard_identities: int,
    executor: str,
    step_server: bool,
    roots: list[int],
) -> dict:
    subprocess.run(
        [sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get()"
         f".add_dynamic_partitions('environments', [{env_key!r}])"],
        env=environment, check=True,
    )  # fmt: skip
    config = json.dumps({"ops": {"segment_membership_bitmaps": {"config": {"force": True}}}})
    progress(
        f"backfilling in shards of {shard_identities:,} through dagster asset materialize "
        f"({executor} executor)"
    )
    started = time.time()
    process = subprocess.Popen(
        dagster_command(
            "asset", "materialize", "-m", "membership_pipeline.definitions",
            "--select", "segment_membership_bitmaps", "--partition", env_key,
            "--config-json", config, in_process=executor == "in_process", switch=step_server,
        ),
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    peaks: dict[int, float] = {}
    parents: dict[int, int] = {}
    sampler = threading.Thread(
        target=_sample_tree, args=(process, [process.pid, *roots], peaks, parents), daemon=True
    )
    sampler.start()
    _, stderr = process.communicate()
    wall = time.time() - started
    sampler.join(5)
    if process.returncode != 0:
        raise SystemExit(f"the backfill failed:\n{stderr[-4000:]}")
    with MembershipStore(store_url) as store:
        done = store.metadata(env_key)
        assert done is not None and done.published_at is not None
        shards = store.shard_reports(done.published_version_id)
        to_flip = done.published_at.timestamp() - started
        identities = done.published_identity_count
    return {
        "wall": wall,
        "to_flip": to_flip,
        "shards": shards,
        "identities": identities,
        "process_peaks": sorted(peaks.values(), reverse=True),
        "parents": parents,  # every process seen under the run (and the roots): its parent
    }


def _sample_tree(
    process: subprocess.Popen, roots: list[int], peaks: dict[int, float], parents: dict[int, int]
) -> None:
    """Peak RSS of every process under the run (steps, forkserver, MD5 workers) and under the
    other ``roots`` (Celery workers), from /proc; and each one's parent."""
    while process.poll() is None:
        for pid, parent in _descendants(roots):
            parents[pid] = parent
            try:
                peaks[pid] = max(peaks.get(pid, 0.0), peak_rss_mb(pid))
            except (FileNotFoundError, ProcessLookupError):
                continue
        time.sleep(1.0)  # VmHWM keeps the peak: sampling often only costs the run CPU


def _descendants(roots: list[int]) -> list[tuple[int, int]]:
    """Every process under ``roots`` (the roots included), with its parent."""
    children: dict[int, list[int]] = {}
    parent_of: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(status.parent.name)
        parent_of[pid] = int(fields[1])
        children.setdefault(parent_of[pid], []).append(pid)
    found, stack = [], list(roots)
    while stack:
        pid = stack.pop()
        found.append((pid, parent_of.get(pid, 0)))
        stack.extend(children.get(pid, []))
    return found
