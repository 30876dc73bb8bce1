"""A second process for MD5, so that large percentage splits use both cores.

numpy's MD5 runs at its memory and per-call limits on one core, and threads do not help (the GIL
is held between numpy's many small operations). Message templates live in shared memory; one
worker process hashes half of each large batch from the template while the calling process
hashes the other half.

The worker is a plain subprocess (``python -m ...md5_worker_process``) talking over its stdin and
stdout, not a ``multiprocessing`` child: that would re-import the caller's ``__main__`` and share
its resource tracker. Anything going wrong with the worker switches it off for the process and
the caller hashes everything itself: the answer never depends on the worker.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import subprocess
import sys
import threading
import weakref
from multiprocessing.shared_memory import SharedMemory
from typing import IO

import numpy as np

from membership_pipeline.evaluation.md5_kernel import hash_template
from membership_pipeline.structured_logging import get_logger

log = get_logger("evaluation")


class SharedWords:
    """A uint32 array in shared memory, which the worker opens by name."""

    def __init__(self, shape: tuple[int, int]) -> None:
        shm = SharedMemory(create=True, size=max(4 * shape[0] * shape[1], 1))
        self.name = shm.name
        self.array: np.ndarray = np.ndarray(shape, dtype=np.uint32, buffer=shm.buf)
        weakref.finalize(self, _release, shm)


def _release(shm: SharedMemory) -> None:
    with contextlib.suppress(BufferError):  # a numpy view is still alive: the mapping goes with it
        shm.close()
    shm.unlink()


def hash_with_worker(
    words: SharedWords, prefix: bytes, columns: slice | np.ndarray, out: np.ndarray
) -> None:
    """Hash ``columns`` of the template into ``out``: half here, half in the worker."""
    half = len(out) // 2
    if isinstance(columns, slice):
        start = columns.start or 0
        mine: slice | np.ndarray = slice(start, start + half)
        theirs: slice | np.ndarray = slice(start + half, start + len(out))
    else:
        mine, theirs = columns[:half], columns[half:]
    worker = _Worker.shared()
    if worker is None or not worker.lock.acquire(blocking=False):
        hash_template(words.array, prefix, columns, out)
        return
    try:
        sent = worker.send((words.name, words.array.shape, prefix, theirs, len(out) - half))
        hash_template(words.array, prefix, mine, out[:half])
        received = worker.receive(len(out) - half) if sent else None
    finally:
        worker.lock.release()
    if received is None:
        hash_template(words.array, prefix, theirs, out[half:])
    else:
        out[half:] = received


def worker_pid() -> int | None:
    """The worker's process id, while one runs."""
    return _Worker._instance.process.pid if _Worker._instance is not None else None


def stop_worker() -> None:
    """End the worker process, if one runs (it restarts on the next large batch)."""
    worker, _Worker._instance = _Worker._instance, None
    if worker is not None:
        worker.stop()


def workers_available() -> bool:
    return (os.cpu_count() or 1) > 1 and not _Worker.disabled


class _Worker:
    disabled = False
    _instance: _Worker | None = None

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "membership_pipeline.evaluation.md5_worker_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        atexit.register(self.stop)

    @classmethod
    def shared(cls) -> _Worker | None:
        if cls.disabled:
            return None
        if cls._instance is None:
            try:
                cls._instance = cls()
            except OSError as exc:
                cls._disable(exc)
                return None
        return cls._instance

    def send(self, task: tuple) -> bool:
        try:
            _write_frame(
                self._pipe(self.process.stdin), pickle.dumps(task, pickle.HIGHEST_PROTOCOL)
            )
            return True
        except (OSError, ValueError) as exc:
            self._disable(exc)
            return False

    def receive(self, count: int) -> np.ndarray | None:
        try:
            payload = _read_frame(self._pipe(self.process.stdout))
            return np.frombuffer(payload, dtype=np.uint32).reshape(count, 4)
        except (OSError, ValueError, EOFError) as exc:
            self._disable(exc)
            return None

    @staticmethod
    def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
        if stream is None:
            raise OSError("worker pipe closed")
        return stream

    def stop(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()

    @classmethod
    def _disable(cls, exc: BaseException) -> None:
        cls.disabled = True
        if cls._instance is not None:
            cls._instance.process.kill()
        log.warning("segment_membership.evaluation.md5_worker_disabled", error=repr(exc))


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(len(payload).to_bytes(8, "little"))
    stream.write(payload)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("the MD5 worker exited")
    size = int.from_bytes(header, "little")
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the MD5 worker exited mid-answer")
    return payload
