"""Whole versions under concurrency, and a writer killed between its shadow write and the flip."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import psutil
from pyroaring import BitMap

from membership_pipeline.model.errors import VersionCollected
from membership_pipeline.storage import BackfillStatus, Claim, MembershipStore
from membership_pipeline_tests.storage.conftest import write_version

ROUNDS = 50
SEGMENTS = 4
STRIDE = 100_000  # every id of round r lies in [r × STRIDE, (r + 1) × STRIDE)


def _round_segments(round_: int) -> dict[str, BitMap]:
    """Each version's signature: its ids encode its round, each count is a function of it."""
    return {
        f"s{j}": BitMap(range(round_ * STRIDE, round_ * STRIDE + _count(round_, j)))
        for j in range(SEGMENTS)
    }


def _count(round_: int, segment: int) -> int:
    return 2_000 + 97 * segment + round_


def _publish_round(store: MembershipStore, round_: int, may_publish: list[int]) -> None:
    held = store.claim("env", f"writer-{round_}")
    assert isinstance(held, Claim), held
    shadow = store.stage(held, as_of=store.clock())
    segments = _round_segments(round_)
    shadow.add_universe(BitMap().union(*segments.values()))
    for key, members in segments.items():
        shadow.add_segment(key, None, members)
    shadow.seal(now=store.clock())
    time.sleep(0.01)  # sealed, unpublished: a reader that sees this round now reads the shadow
    may_publish[0] = round_
    store.publish(held, shadow)


def test_readers_see_only_whole_versions_while_fifty_are_published(database_url):
    from membership_pipeline.database.schema import migrate

    migrate(database_url)
    store = MembershipStore(database_url, cooldown=timedelta(0), chunk_bytes=256, pool_size=8)
    may_publish = [0]  # the newest round whose publish has begun
    _publish_round(store, 0, may_publish)
    reader = store.reader()
    done = threading.Event()
    mixed: list[str] = []
    seen_rounds: set[int] = set()
    reads = [0]
    lock = threading.Lock()

    def read_until_done(seed: int) -> None:
        last_publication = 0
        while not done.is_set():
            try:
                snapshot = reader.published("env")
                assert snapshot.publication >= last_publication, "went back"
                last_publication = snapshot.publication
                page = snapshot.members("s0", limit=5_000).ids
                round_ = page[0] // STRIDE
                problems = []
                if any(i // STRIDE != round_ for i in page) or len(page) != _count(round_, 0):
                    problems.append("members")
                for j in range(SEGMENTS):
                    if snapshot.count(f"s{j}") != _count(round_, j):
                        problems.append(f"count s{j}")
                if any(i // STRIDE != round_ for i in snapshot.sample("s3", 25, seed=seed)):
                    problems.append("sample")
                probe = round_ * STRIDE + _count(round_, 0)  # in s1..s3 of its round, not s0
                if snapshot.segments_of(probe).segments != ["s1", "s2", "s3"]:
                    problems.append("segments_of")
                one_call = reader.members("env", "s2", limit=5_000).ids
                if len({i // STRIDE for i in one_call}) != 1:
                    problems.append("one-call members")
            except VersionCollected:
                continue  # a pinned version was collected under a slow reader: read again
            except Exception as error:  # a reader that breaks is a failure too, not a silence
                with lock:
                    mixed.append(f"reader error: {error!r}")
                return
            if round_ > may_publish[0]:
                problems.append("an unpublished version")
            with lock:
                reads[0] += 1
                seen_rounds.add(round_)
                if problems:
                    mixed.append(f"round {round_}: {problems}")

    readers = [threading.Thread(target=read_until_done, args=(seed,)) for seed in range(4)]
    for thread in readers:
        thread.start()
    try:
        for round_ in range(1, ROUNDS + 1):
            _publish_round(store, round_, may_publish)
            if round_ % 10 == 0:
                store.collect_garbage(keep_retired=1, retired_grace=timedelta(0))
    finally:
        done.set()
        for thread in readers:
            thread.join()
    assert mixed == []
    assert reads[0] >= ROUNDS
    assert len(seen_rounds) >= 10  # the readers really did overlap the publishing
    assert reader.count("env", "s0") == _count(ROUNDS, 0)
    store.close()


def test_a_writer_killed_before_the_flip_loses_nothing(store_url):
    with MembershipStore(store_url, cooldown=timedelta(0)) as store:
        held = store.claim("env", "first")
        first = write_version(store, held, {"s": BitMap([1, 2, 3])})

        writer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "membership_pipeline_tests.storage.crashing_writer",
                store_url,
                "env",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = writer.stdout.readline()
        assert line.startswith("SHADOW_WRITTEN"), line
        shadow_version = int(line.split()[1])
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL

        stuck = store.metadata("env")
        assert stuck.last_backfill_status is BackfillStatus.RUNNING
        assert stuck.claim_owner == f"pid:{writer.pid}"
        assert stuck.published_version_id == first.version_id
        reader = store.reader()
        assert reader.members("env", "s").ids == [1, 2, 3]
        assert store.collect_garbage().abandoned_versions == []  # still claimed

        def is_owner_alive(owner: str | None) -> bool | None:
            return psutil.pid_exists(int(owner.removeprefix("pid:"))) if owner else None

        reconciled = store.reconcile_stale_claims(is_owner_alive)
        assert [(r.environment_key, r.reason) for r in reconciled] == [("env", "owner_gone")]
        assert store.metadata("env").last_backfill_status is BackfillStatus.FAILED
        assert store.collect_garbage().abandoned_versions == [shadow_version]
        assert reader.members("env", "s").ids == [1, 2, 3]

        again = store.claim("env", "after-crash")
        assert isinstance(again, Claim)
        write_version(store, again, {"s": BitMap([4])})
        assert reader.members("env", "s").ids == [4]
