"""Running ``dagster asset materialize`` of one environment in a fresh process, for the
benchmarks: wall time, time to the flip, and the peak RSS of every process of the run. Every
command goes through ``membership-run`` (the step server, or the steps' imports, start with the
command: see ``defs/membership/step_server.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from membership_pipeline.benchmarks.scratch_database import progress
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
) -> dict:
    """One ``dagster asset materialize`` of the environment's partition (forced past the
    cooldown) in a fresh process: wall time, process start → flip, the shards' reports and
    the peak RSS of every process of the run. ``step_server=False``: plain ``dagster``, without
    ``membership-run``'s early start."""
    environment = {
        **os.environ,
        "DAGSTER_HOME": home,
        "MEMBERSHIP_SOURCE_URL": source_url,
        "MEMBERSHIP_STORE_URL": store_url,
        "MEMBERSHIP_SHARD_IDENTITIES": str(shard_identities),
        "MEMBERSHIP_EXECUTOR": executor,
    }
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
    sampler = threading.Thread(target=_sample_tree, args=(process, peaks), daemon=True)
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
    }


def _sample_tree(process: subprocess.Popen, peaks: dict[int, float]) -> None:
    """Peak RSS of every process under the run (steps, forkserver, MD5 workers), from /proc."""
    while process.poll() is None:
        for pid in _descendants(process.pid):
            try:
                peaks[pid] = max(peaks.get(pid, 0.0), peak_rss_mb(pid))
            except (FileNotFoundError, ProcessLookupError):
                continue
        time.sleep(1.0)  # VmHWM keeps the peak: sampling often only costs the run CPU


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(status.parent.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found
